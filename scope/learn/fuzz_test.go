package learn

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"net/netip"
	"strconv"
	"testing"
	"unicode/utf8"
)

// FuzzReadEvents checks the event reader against encoding/json: each line
// is counted once, as an event or a skip; a line that is not JSON is
// malformed; and what it reads of a line that is agrees with a decoder
// built on encoding/json's tokens. Seeds: testdata/fuzz/FuzzReadEvents.
func FuzzReadEvents(f *testing.F) {
	for _, line := range genEvents(7, 40) {
		f.Add(line)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var got []string
		err := ReadEvents(bytes.NewReader(data), func(ev *Event) {
			got = append(got, describe(SkipNone, ev))
		}, func(s Skip, _ []byte) {
			got = append(got, describe(s, nil))
		})
		if err != nil {
			t.Fatal(err)
		}
		lines := bytes.Split(data, []byte("\n"))
		if len(lines[len(lines)-1]) == 0 {
			lines = lines[:len(lines)-1]
		}
		if len(got) != len(lines) {
			t.Fatalf("%d results for %d lines: %q", len(got), len(lines), got)
		}
		for i, line := range lines {
			line = bytes.TrimSuffix(line, []byte("\r"))
			want := expect(line)
			if !json.Valid(line) && !isBlank(line) && got[i] != describe(SkipMalformed, nil) {
				t.Fatalf("line %q is not JSON, read as %s", line, got[i])
			}
			if !utf8.Valid(line) {
				continue // encoding/json replaces invalid UTF-8 in strings; the reader keeps it
			}
			if got[i] != want {
				t.Fatalf("line %q:\n got %s\nwant %s", line, got[i], want)
			}
		}
	})
}

func describe(s Skip, ev *Event) string {
	if ev == nil {
		return "skip " + s.String()
	}
	b, _ := json.Marshal(ev)
	return string(b)
}

// expect reads a line the way the reader should, on encoding/json's tokens.
func expect(line []byte) string {
	if isBlank(line) {
		return describe(SkipBlank, nil)
	}
	if !json.Valid(line) {
		return describe(SkipMalformed, nil)
	}
	dec := json.NewDecoder(bytes.NewReader(line))
	dec.UseNumber()
	var ev Event
	var f fields
	tok, _ := dec.Token()
	switch tok {
	case nil:
		return describe(SkipUnknownSchema, nil)
	case json.Delim('{'):
		if err := f.object(dec, &ev, "top"); err != nil {
			return describe(SkipMalformed, nil)
		}
	default:
		return describe(SkipMalformed, nil)
	}
	if f.schema != Schema {
		return describe(SkipUnknownSchema, nil)
	}
	switch f.kind {
	case "connect":
		ev.Kind = KindConnect
	case "tls":
		ev.Kind = KindTLS
	case "verdict":
		ev.Kind = KindVerdict
	case "loss":
		ev.Kind = KindLoss
	}
	if f.time != "" {
		n, ok := parseTime(f.time)
		if !ok {
			return describe(SkipMalformed, nil)
		}
		ev.Time = n
	}
	if c, err := strconv.ParseUint(f.conn, 16, 64); err == nil {
		ev.Conn = c
	}
	if f.ip != "" {
		a, err := netip.ParseAddr(f.ip)
		if err != nil || a.Zone() != "" {
			return describe(SkipMalformed, nil)
		}
		ev.Dst = netip.AddrPortFrom(a.Unmap(), f.port)
	}
	return describe(SkipNone, &ev)
}

type fields struct {
	schema, kind, time, conn, ip string
	port                         uint16
}

var errType = errors.New("wrong type")

// object reads the members of an object whose '{' was read.
func (f *fields) object(dec *json.Decoder, ev *Event, set string) error {
	for {
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		if tok == json.Delim('}') {
			return nil
		}
		key := tok.(string)
		var str *string
		var num func(uint64) bool
		var sub string
		switch set + "." + key {
		case "top.schema":
			str = &f.schema
		case "top.kind":
			str = &f.kind
		case "top.time":
			str = &f.time
		case "top.conn":
			str = &f.conn
		case "top.outcome":
			str = &ev.Outcome
		case "top.identity":
			str = &ev.Identity
		case "top.dst", "top.tls", "top.process", "top.k8s", "top.loss", "dst.k8s":
			sub = set + "." + key
		case "dst.ip":
			str = &f.ip
		case "dst.port":
			num = func(n uint64) bool { f.port = uint16(n); return n <= 65535 }
		case "dst.name":
			str = &ev.DstName
		case "dst.name_source":
			str = &ev.NameSource
		case "dst.k8s.namespace":
			str = &ev.CalleeNamespace
		case "dst.k8s.service":
			str = &ev.CalleeService
		case "top.tls.sni":
			str = &ev.SNI
		case "top.process.exe":
			str = &ev.Exe
		case "top.k8s.namespace":
			str = &ev.Namespace
		case "top.k8s.service_account":
			str = &ev.ServiceAccount
		case "top.loss.stage":
			str = &ev.LossStage
		case "top.loss.reason":
			str = &ev.LossReason
		case "top.loss.count":
			num = func(n uint64) bool { ev.LossCount = n; return true }
		}
		if sub == "top.dst" {
			sub = "dst"
		}
		tok, err = dec.Token()
		if err != nil {
			return err
		}
		switch {
		case tok == nil:
		case str != nil:
			s, ok := tok.(string)
			if !ok {
				return errType
			}
			*str = s
		case num != nil:
			n, ok := tok.(json.Number)
			if !ok {
				return errType
			}
			v, err := strconv.ParseUint(string(n), 10, 64)
			if err != nil || !num(v) {
				return errType
			}
		case sub != "":
			if tok != json.Delim('{') {
				return errType
			}
			if err := f.object(dec, ev, sub); err != nil {
				return err
			}
		default:
			if err := skipValue(dec, tok); err != nil {
				return err
			}
		}
	}
}

func skipValue(dec *json.Decoder, tok json.Token) error {
	if tok != json.Delim('{') && tok != json.Delim('[') {
		return nil
	}
	for depth := 1; depth > 0; {
		tok, err := dec.Token()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return io.ErrUnexpectedEOF
			}
			return err
		}
		switch tok {
		case json.Delim('{'), json.Delim('['):
			depth++
		case json.Delim('}'), json.Delim(']'):
			depth--
		}
	}
	return nil
}
