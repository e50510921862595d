package main

import (
	"crypto/tls"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/callscope/callscope/exporter"
)

// kafkaFlags are how run and tail reach Kafka: the same flags, with the
// same names and meanings, for both.
type kafkaFlags struct {
	brokers          stringList
	topic            string
	violationsTopic  string
	tls              bool
	caFile           string
	certFile         string
	keyFile          string
	saslMechanism    string
	saslUsername     string
	saslPasswordFile string
}

func (k *kafkaFlags) register(fs *flag.FlagSet, brokersUsage string) {
	fs.Var(&k.brokers, "kafka-brokers", brokersUsage)
	fs.StringVar(&k.topic, "kafka-topic", "callscope.events", "Kafka `topic` of every event")
	fs.StringVar(&k.violationsTopic, "kafka-violations-topic", "callscope.violations", "Kafka `topic` of violations, in addition to the events topic")
	fs.BoolVar(&k.tls, "kafka-tls", false, "connect to the brokers over TLS")
	fs.StringVar(&k.caFile, "kafka-ca-file", "", "PEM `file` of the CAs that sign the brokers' certificates (default the system's)")
	fs.StringVar(&k.certFile, "kafka-cert-file", "", "PEM client certificate `file` for TLS to the brokers")
	fs.StringVar(&k.keyFile, "kafka-key-file", "", "PEM client key `file` for TLS to the brokers")
	fs.StringVar(&k.saslMechanism, "kafka-sasl-mechanism", "", "SASL `mechanism`: plain, scram-sha-256 or scram-sha-512; empty turns SASL off")
	fs.StringVar(&k.saslUsername, "kafka-sasl-username", "", "SASL user `name`")
	fs.StringVar(&k.saslPasswordFile, "kafka-sasl-password-file", "", "`file` holding the SASL password")
}

// tlsConfig is the TLS to the brokers; nil when it is off. A CA or a
// client certificate turns it on: never plaintext to brokers given them.
func (k *kafkaFlags) tlsConfig() (*tls.Config, error) {
	if !k.tls && k.caFile == "" && k.certFile == "" {
		return nil, nil
	}
	tc, err := exporter.KafkaTLSConfig(k.caFile, k.certFile, k.keyFile)
	if err != nil {
		return nil, fmt.Errorf("kafka TLS: %w", err)
	}
	return tc, nil
}

// password reads --kafka-sasl-password-file; "" when none is given.
func (k *kafkaFlags) password() (string, error) {
	if k.saslPasswordFile == "" {
		return "", nil
	}
	b, err := os.ReadFile(k.saslPasswordFile)
	if err != nil {
		return "", fmt.Errorf("--kafka-sasl-password-file: %w", err)
	}
	return strings.TrimRight(string(b), "\r\n"), nil
}

// startKafka starts the Kafka sink when brokers are given.
func startKafka(cfg *runConfig, m *exporter.Metrics, log *slog.Logger) (*exporter.Kafka, error) {
	k := &cfg.kafka
	if len(k.brokers) == 0 {
		return nil, nil
	}
	tc, err := k.tlsConfig()
	if err != nil {
		return nil, err
	}
	password, err := k.password()
	if err != nil {
		return nil, err
	}
	sink, err := exporter.NewKafka(exporter.KafkaConfig{
		Brokers:         k.brokers,
		Topic:           k.topic,
		ViolationsTopic: k.violationsTopic,
		TLS:             tc,
		SASLMechanism:   k.saslMechanism,
		SASLUsername:    k.saslUsername,
		SASLPassword:    password,
		SpoolDir:        cfg.spoolDir,
		SpoolMaxBytes:   int64(cfg.spoolMaxBytes),
		Logger:          log, // the sink names its own component
		Registerer:      m.Registry,
	})
	if err != nil {
		return nil, fmt.Errorf("kafka: %w", err)
	}
	return sink, nil
}
