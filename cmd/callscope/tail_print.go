// How tail prints an event, escaped whatever it holds.

package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/segmentio/kafka-go"
	"golang.org/x/sys/unix"

	"github.com/callscope/callscope/exporter"
	"github.com/callscope/callscope/internal/termsafe"
)

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

// isTerminal says whether w is a terminal, where colour helps.
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}
