package main

import (
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/callscope/callscope/exporter"
)

// startKafka starts the Kafka sink when brokers are given.
func startKafka(cfg *runConfig, m *exporter.Metrics) (*exporter.Kafka, error) {
	if cfg.kafkaBrokers == "" {
		return nil, nil
	}
	kc := exporter.KafkaConfig{
		Brokers:         strings.Split(cfg.kafkaBrokers, ","),
		Topic:           cfg.kafkaTopic,
		ViolationsTopic: cfg.kafkaViolationsTopic,
		SASLMechanism:   cfg.kafkaSASLMechanism,
		SASLUsername:    cfg.kafkaSASLUsername,
		SpoolDir:        cfg.spoolDir,
		SpoolMaxBytes:   int64(cfg.spoolMaxBytes),
		Logger:          slog.Default(), // the sink names its own component
		Registerer:      m.Registry,
	}
	if cfg.kafkaTLS || cfg.kafkaCAFile != "" || cfg.kafkaCertFile != "" {
		tc, err := exporter.KafkaTLSConfig(cfg.kafkaCAFile, cfg.kafkaCertFile, cfg.kafkaKeyFile)
		if err != nil {
			return nil, fmt.Errorf("kafka TLS: %w", err)
		}
		kc.TLS = tc
	}
	if cfg.kafkaSASLPasswordFile != "" {
		b, err := os.ReadFile(cfg.kafkaSASLPasswordFile)
		if err != nil {
			return nil, fmt.Errorf("--kafka-sasl-password-file: %w", err)
		}
		kc.SASLPassword = strings.TrimRight(string(b), "\r\n")
	}
	k, err := exporter.NewKafka(kc)
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	return k, nil
}
