// `callscope tail`: its flags and the loop that joins the parts below.
// Reading Kafka is in tail_kafka.go, printing in tail_print.go, finding
// missing events in tail_gaps.go.

package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/segmentio/kafka-go"

	"github.com/callscope/callscope/exporter"
	"github.com/callscope/callscope/internal/termsafe"
	"github.com/callscope/callscope/scope"
)

// tailConfig is what `callscope tail` is told.
type tailConfig struct {
	kafka         kafkaFlags
	violations    bool
	json          bool
	fromBeginning bool
	findings      stringList // --finding: show only events with one of them

	// gapGrace is how long a missing seq may take to arrive from another
	// partition before it is reported as a gap.
	gapGrace time.Duration
}

// tailFlags declares the flags of `callscope tail`; the Kafka ones are
// named as run's, and like them may be set as CALLSCOPE_<NAME>.
func tailFlags(cfg *tailConfig) *flag.FlagSet {
	fs := flag.NewFlagSet("callscope tail", flag.ContinueOnError)
	cfg.kafka.register(fs, "Kafka brokers as `host:port,...`")
	fs.BoolVar(&cfg.violations, "violations", false, "read the violations topic rather than every event")
	fs.BoolVar(&cfg.json, "json", false, "print each event's JSON, one line each, control characters escaped")
	fs.BoolVar(&cfg.fromBeginning, "from-beginning", false, "start from the oldest event Kafka keeps rather than from now")
	fs.Var(&cfg.findings, "finding", "show only the events carrying this `finding` (human_use, plaintext, cleartext_protocol, legacy_tls, no_sni, cross_environment), and loss events; repeatable, or comma-separated")
	return fs
}

// tailCommand runs `callscope tail` until SIGINT or SIGTERM.
func tailCommand(args []string, stdout, stderr io.Writer) error {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return runTail(ctx, args, os.Getenv, stdout, stderr)
}

func parseTailConfig(args []string, getenv func(string) string, stderr io.Writer) (*tailConfig, error) {
	cfg := &tailConfig{gapGrace: 3 * time.Second}
	fs := tailFlags(cfg)
	fs.SetOutput(stderr)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if _, err := applyEnv(fs, getenv); err != nil {
		return nil, err
	}
	if len(cfg.kafka.brokers) == 0 {
		return nil, errors.New("tail: --kafka-brokers (or CALLSCOPE_KAFKA_BROKERS) is needed")
	}
	var known []string
	for _, f := range scope.Catalogue {
		known = append(known, f.ID)
	}
	for _, f := range cfg.findings {
		if !slices.Contains(known, f) {
			return nil, fmt.Errorf("tail: --finding %q: want one of %s", f, strings.Join(known, ", "))
		}
	}
	return cfg, nil
}

func (cfg *tailConfig) dialer() (*kafka.Dialer, error) {
	d := &kafka.Dialer{Timeout: 10 * time.Second, ClientID: "callscope-tail"}
	tc, err := cfg.kafka.tlsConfig()
	if err != nil {
		return nil, err
	}
	d.TLS = tc
	password, err := cfg.kafka.password()
	if err != nil {
		return nil, err
	}
	mech, err := exporter.KafkaSASL(cfg.kafka.saslMechanism, cfg.kafka.saslUsername, password)
	if err != nil {
		return nil, err
	}
	d.SASLMechanism = mech
	return d, nil
}

// runTail reads the topic, from every partition, and prints its events
// until ctx is done.
func runTail(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, err := parseTailConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	dialer, err := cfg.dialer()
	if err != nil {
		return err
	}
	topic := cfg.kafka.topic
	if cfg.violations {
		topic = cfg.kafka.violationsTopic
	}
	brokers := cfg.kafka.brokers
	partitions, err := lookupPartitions(ctx, dialer, brokers, topic)
	if err != nil {
		// Brokers answer bad credentials with an error, or just hang up.
		if dialer.SASLMechanism != nil && (errors.Is(err, kafka.SASLAuthenticationFailed) ||
			errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)) {
			return fmt.Errorf("%w: Kafka authentication failed? check --kafka-sasl-mechanism, --kafka-sasl-username and the password file", err)
		}
		return err
	}

	// Cancelled on return, so that no reader is left behind.
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	msgs, closeReaders, err := readPartitions(ctx, dialer, brokers, topic, partitions, cfg.fromBeginning, stderr)
	if err != nil {
		return err
	}
	defer closeReaders()

	p := &tailPrinter{out: stdout, errs: stderr, json: cfg.json, color: isTerminal(stdout) && getenv("NO_COLOR") == "", findings: cfg.findings}
	defer func() {
		if p.skipped > 0 {
			fmt.Fprintf(stderr, "tail: %d records were not events and were skipped\n", p.skipped)
		}
	}()
	// Gaps only mean something where every event goes: the violations
	// topic has gaps by design. One partition keeps order, so a gap there
	// is a gap at once.
	var gaps *seqTracker
	if !cfg.violations {
		grace := cfg.gapGrace
		if len(partitions) == 1 {
			grace = 0
		}
		gaps = newSeqTracker(grace, func(g gap) {
			fmt.Fprintf(stderr, "gap: instance %s seq %d..%d missing (%d events)\n", termsafe.String(g.instance), g.from, g.to, g.to-g.from+1)
		})
	}
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		select {
		case m, ok := <-msgs:
			if !ok {
				return nil
			}
			ev, err := p.print(m)
			if err != nil {
				return err
			}
			if gaps != nil && ev != nil {
				if instance, seq, ok := ev.instanceSeq(); ok {
					gaps.see(instance, seq, time.Now())
				}
			}
		case now := <-tick.C:
			if gaps != nil {
				gaps.flush(now)
			}
		case <-ctx.Done():
			return nil
		}
	}
}
