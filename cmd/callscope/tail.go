package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
	"unicode/utf8"

	"github.com/segmentio/kafka-go"
	"golang.org/x/sys/unix"

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
	msgs := make(chan kafka.Message, 256)
	var wg sync.WaitGroup
	readers := make([]*kafka.Reader, 0, len(partitions))
	defer func() {
		for _, r := range readers {
			r.Close()
		}
	}()
	for _, p := range partitions {
		r := kafka.NewReader(kafka.ReaderConfig{
			Brokers:   brokers,
			Topic:     topic,
			Partition: p.ID,
			Dialer:    dialer,
			MaxWait:   500 * time.Millisecond,
			ErrorLogger: kafka.LoggerFunc(func(msg string, args ...any) {
				// Broker errors can quote what the broker was sent.
				fmt.Fprintf(stderr, "kafka: %s\n", termsafe.Line(fmt.Sprintf(msg, args...)))
			}),
		})
		offset := kafka.LastOffset
		if cfg.fromBeginning {
			offset = kafka.FirstOffset
		}
		if err := r.SetOffset(offset); err != nil {
			r.Close()
			return fmt.Errorf("partition %d: %w", p.ID, err)
		}
		readers = append(readers, r)
		wg.Go(func() {
			for {
				m, err := r.ReadMessage(ctx)
				if err != nil {
					return // ctx is done, or the reader was closed
				}
				select {
				case msgs <- m:
				case <-ctx.Done():
					return
				}
			}
		})
	}
	go func() {
		wg.Wait()
		close(msgs)
	}()

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

// lookupPartitions asks the brokers in turn for the topic's partitions.
func lookupPartitions(ctx context.Context, d *kafka.Dialer, brokers []string, topic string) ([]kafka.Partition, error) {
	var errs []error
	for _, b := range brokers {
		ps, err := d.LookupPartitions(ctx, "tcp", b, topic)
		if err == nil && len(ps) > 0 {
			slices.SortFunc(ps, func(a, b kafka.Partition) int { return a.ID - b.ID })
			return ps, nil
		}
		if err == nil {
			err = errors.New("no partitions")
		}
		errs = append(errs, fmt.Errorf("%s: %w", b, err))
		if errors.Is(err, kafka.UnknownTopicOrPartition) || errors.Is(err, kafka.SASLAuthenticationFailed) {
			break // every broker would say the same
		}
	}
	return nil, fmt.Errorf("topic %s: %w", topic, errors.Join(errs...))
}

// isTerminal says whether w is a terminal, where colour helps.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// tailEvent is the part of an event tail prints.
type tailEvent struct {
	ID       string    `json:"id"`
	Seq      uint64    `json:"seq"`
	Time     time.Time `json:"time"`
	Kind     string    `json:"kind"`
	Outcome  string    `json:"outcome"`
	Identity string    `json:"identity"`
	Dst      *struct {
		IP   string `json:"ip"`
		Port uint16 `json:"port"`
		Name string `json:"name"`
	} `json:"dst"`
	TLS *struct {
		SNI string `json:"sni"`
	} `json:"tls"`
	Process *struct {
		PID  int    `json:"pid"`
		Comm string `json:"comm"`
	} `json:"process"`
	Scope *struct {
		Verdict       string `json:"verdict"`
		Policy        string `json:"policy"`
		Reason        string `json:"reason"`
		PolicyVersion string `json:"policy_version"`
		Staged        *struct {
			Verdict string `json:"verdict"`
			Policy  string `json:"policy"`
			Reason  string `json:"reason"`
		} `json:"staged"`
	} `json:"scope"`
	Loss *struct {
		Stage  string `json:"stage"`
		Reason string `json:"reason"`
		Count  uint64 `json:"count"`
	} `json:"loss"`
	Findings []struct {
		ID     string `json:"id"`
		OWASP  string `json:"owasp"`
		Reason string `json:"reason"`
	} `json:"findings"`
}

// shown says whether ev passes the --finding filter: it carries one of
// the findings, or tells of lost events, which every view must show.
func (p *tailPrinter) shown(ev *tailEvent) bool {
	if len(p.findings) == 0 || ev.Kind == "loss" {
		return true
	}
	for _, f := range ev.Findings {
		if slices.Contains(p.findings, f.ID) {
			return true
		}
	}
	return false
}

// instanceSeq returns the agent instance of the event (its id is
// "<instance>-<seq>") and its seq.
func (ev *tailEvent) instanceSeq() (string, uint64, bool) {
	i := strings.LastIndexByte(ev.ID, '-')
	if i <= 0 || ev.Seq == 0 {
		return "", 0, false
	}
	return ev.ID[:i], ev.Seq, true
}

const (
	ansiRed    = "\x1b[31m"
	ansiGreen  = "\x1b[32m"
	ansiYellow = "\x1b[33m"
	ansiDim    = "\x1b[2m"
	ansiReset  = "\x1b[0m"
)

type tailPrinter struct {
	out, errs io.Writer
	json      bool
	color     bool
	findings  []string
	line      []byte
	compact   bytes.Buffer
	// skipped counts the records that were not events, told on errs.
	skipped int
}

// maxQuoted bounds how much of a record that is not an event is shown.
const maxQuoted = 200

// print writes one line for the event in m and returns the event, or nil
// when m holds none. Whatever the record holds, what reaches the terminal
// is escaped: the text line's fields by termsafe, and in JSON mode the
// record compacted to one line with termsafe.AppendJSON's escapes. It
// fails on an OCSF record outside JSON mode: tail reads the callscope
// format only, and a line made from another format's fields would mislead.
func (p *tailPrinter) print(m kafka.Message) (*tailEvent, error) {
	ev, err := decodeTailEvent(m.Value)
	if err == nil && !p.shown(ev) {
		return ev, nil
	}
	if err != nil && len(p.findings) > 0 && !errors.Is(err, errOCSF) {
		// A record that is no event carries no finding to match.
		p.notAnEvent(m, err)
		return nil, nil
	}
	if p.json {
		// JSON that is not an event is printed too: --json shows the
		// records as they are, only written safely.
		p.compact.Reset()
		if cerr := json.Compact(&p.compact, m.Value); cerr != nil {
			p.notAnEvent(m, cerr)
			return nil, nil
		}
		p.compact.WriteByte('\n')
		p.line = termsafe.AppendJSON(p.line[:0], p.compact.Bytes())
		p.out.Write(p.line)
	}
	if err != nil {
		if errors.Is(err, errOCSF) && !p.json {
			return nil, fmt.Errorf("partition %d offset %d: %w", m.Partition, m.Offset, err)
		}
		if !p.json {
			p.notAnEvent(m, err)
		}
		return nil, nil
	}
	if !p.json {
		p.line = p.format(p.line[:0], ev)
		p.out.Write(p.line)
	}
	return ev, nil
}

// errOCSF says a record is OCSF, written by an agent run with --format ocsf.
var errOCSF = errors.New("an OCSF record (the agent runs with --format " + exporter.FormatOCSF + "): tail reads the " +
	exporter.FormatCallscope + " format only; --json prints the records as they are")

// decodeTailEvent decodes an event: a JSON object that fits the schema.
func decodeTailEvent(value []byte) (*tailEvent, error) {
	if v := bytes.TrimLeft(value, " \t\r\n"); len(v) == 0 || v[0] != '{' {
		return nil, errors.New("not a JSON object")
	}
	// An OCSF record has a class_uid and no schema; its time is a number,
	// which would fail below with a message that says nothing of why.
	var probe struct {
		Schema   *string          `json:"schema"`
		ClassUID *json.RawMessage `json:"class_uid"`
	}
	if json.Unmarshal(value, &probe) == nil && probe.ClassUID != nil && probe.Schema == nil {
		return nil, errOCSF
	}
	ev := new(tailEvent)
	if err := json.Unmarshal(value, ev); err != nil {
		return nil, err
	}
	return ev, nil
}

// notAnEvent tells on errs of a record that is skipped, with the start of
// it, escaped.
func (p *tailPrinter) notAnEvent(m kafka.Message, err error) {
	p.skipped++
	v := m.Value
	more := ""
	if len(v) > maxQuoted {
		n := maxQuoted
		for n > 0 && !utf8.RuneStart(v[n]) {
			n--
		}
		v, more = v[:n], fmt.Sprintf("… (%d bytes)", len(m.Value))
	}
	fmt.Fprintf(p.errs, "not an event, skipped: partition %d offset %d: %s: %s%s\n",
		m.Partition, m.Offset, termsafe.Line(err.Error()), termsafe.String(string(v)), more)
}

// format renders ev as: time, identity → destination, kind, outcome,
// verdict. Every string of the event is escaped: they come from workloads.
func (p *tailPrinter) format(b []byte, ev *tailEvent) []byte {
	b = ev.Time.UTC().AppendFormat(b, "2006-01-02T15:04:05.000Z")
	b = append(b, ' ')
	if ev.Kind == "loss" && ev.Loss != nil {
		b = p.paint(b, ansiYellow, fmt.Sprintf("loss: %d events lost at %s (%s)", ev.Loss.Count,
			termsafe.String(ev.Loss.Stage), termsafe.String(ev.Loss.Reason)))
		if instance, _, ok := ev.instanceSeq(); ok {
			b = append(b, " instance "...)
			b = termsafe.Append(b, instance)
		}
		return append(b, '\n')
	}
	switch {
	case ev.Identity != "":
		b = termsafe.Append(b, ev.Identity)
	case ev.Process != nil:
		b = fmt.Appendf(b, "pid %d (%s)", ev.Process.PID, termsafe.String(ev.Process.Comm))
	default:
		b = append(b, '?')
	}
	b = append(b, " → "...)
	b = appendDestination(b, ev)
	b = append(b, ' ')
	b = termsafe.Append(b, ev.Kind)
	if ev.Outcome != "" {
		b = append(b, ' ')
		b = termsafe.Append(b, ev.Outcome)
	}
	if s := ev.Scope; s != nil && s.Verdict != "" {
		b = append(b, ' ')
		b = p.appendVerdict(b, s.Verdict, s.Policy, s.Reason)
		if st := s.Staged; st != nil && st.Verdict != "" {
			b = append(b, " staged "...)
			b = p.appendVerdict(b, st.Verdict, st.Policy, st.Reason)
		}
		if s.PolicyVersion != "" {
			b = append(b, ' ')
			b = p.paint(b, ansiDim, "[policies "+termsafe.String(s.PolicyVersion)+"]")
		}
	}
	for _, f := range ev.Findings {
		label := "finding " + termsafe.String(f.ID)
		if f.OWASP != "" {
			label += " [" + termsafe.String(f.OWASP) + "]"
		}
		if f.Reason != "" {
			label += ": " + termsafe.String(f.Reason)
		}
		b = append(b, ' ')
		b = p.paint(b, ansiYellow, label)
	}
	return append(b, '\n')
}

// appendVerdict writes a verdict, coloured, with the policy and reason of
// a violation or would_violate.
func (p *tailPrinter) appendVerdict(b []byte, verdict, policy, reason string) []byte {
	v := termsafe.String(verdict)
	if (verdict == "violation" || verdict == "would_violate") && (policy != "" || reason != "") {
		v += " (" + strings.TrimPrefix(termsafe.String(policy)+": "+termsafe.String(reason), ": ") + ")"
	}
	switch verdict {
	case "violation":
		return p.paint(b, ansiRed, v)
	case "allowed":
		return p.paint(b, ansiGreen, v)
	case "pending", "would_violate":
		return p.paint(b, ansiYellow, v)
	}
	return p.paint(b, ansiDim, v)
}

func (p *tailPrinter) paint(b []byte, color, s string) []byte {
	if !p.color {
		return append(b, s...)
	}
	b = append(b, color...)
	b = append(b, s...)
	return append(b, ansiReset...)
}

// appendDestination writes the name called when known, else the address.
func appendDestination(b []byte, ev *tailEvent) []byte {
	name := ""
	if ev.TLS != nil {
		name = ev.TLS.SNI
	}
	if ev.Dst != nil && ev.Dst.Name != "" {
		name = ev.Dst.Name
	}
	name = termsafe.String(name)
	switch {
	case ev.Dst == nil && name == "":
		return append(b, '?')
	case ev.Dst == nil:
		return append(b, name...)
	case name != "":
		return append(b, net.JoinHostPort(name, strconv.Itoa(int(ev.Dst.Port)))...)
	}
	return append(b, net.JoinHostPort(termsafe.String(ev.Dst.IP), strconv.Itoa(int(ev.Dst.Port)))...)
}

// seqTracker finds the seqs of each agent instance that never came. Events
// of one instance are spread over partitions, which Kafka does not order
// among themselves: a seq ahead of the next expected waits grace for those
// before it before they are reported missing. Duplicates (delivery is at
// least once) and events older than the first seen are ignored.
type seqTracker struct {
	grace     time.Duration
	report    func(gap)
	instances map[string]*instanceSeqs
}

type gap struct {
	instance string
	from, to uint64 // inclusive
}

type instanceSeqs struct {
	next  uint64               // lowest seq not seen yet
	ahead map[uint64]time.Time // seen, above next, and when
	since time.Time            // when the oldest of ahead came
}

// maxAhead bounds the seqs held per instance while a gap waits.
const maxAhead = 1 << 16

func newSeqTracker(grace time.Duration, report func(gap)) *seqTracker {
	return &seqTracker{grace: grace, report: report, instances: map[string]*instanceSeqs{}}
}

func (t *seqTracker) see(instance string, seq uint64, now time.Time) {
	in := t.instances[instance]
	if in == nil {
		t.instances[instance] = &instanceSeqs{next: seq + 1, ahead: map[uint64]time.Time{}}
		return
	}
	switch {
	case seq < in.next:
		return
	case seq == in.next:
		in.next++
		in.advance()
	default:
		if len(in.ahead) == 0 {
			in.since = now
		}
		if _, dup := in.ahead[seq]; !dup {
			in.ahead[seq] = now
		}
	}
	t.skip(instance, in, now)
}

// flush reports the gaps that waited long enough.
func (t *seqTracker) flush(now time.Time) {
	for instance, in := range t.instances {
		t.skip(instance, in, now)
	}
}

// skip reports the gaps before the seqs seen ahead that waited long
// enough, and moves on past them.
func (t *seqTracker) skip(instance string, in *instanceSeqs, now time.Time) {
	for len(in.ahead) > 0 && (now.Sub(in.since) >= t.grace || len(in.ahead) > maxAhead) {
		low := uint64(0)
		for s := range in.ahead {
			if low == 0 || s < low {
				low = s
			}
		}
		t.report(gap{instance: instance, from: in.next, to: low - 1})
		in.next = low
		in.advance()
		in.since = now
		for _, at := range in.ahead {
			if at.Before(in.since) {
				in.since = at
			}
		}
	}
}

// advance moves next past the seqs already seen ahead.
func (in *instanceSeqs) advance() {
	for {
		if _, ok := in.ahead[in.next]; !ok {
			return
		}
		delete(in.ahead, in.next)
		in.next++
	}
}
