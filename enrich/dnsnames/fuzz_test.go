package dnsnames

import (
	"encoding/binary"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The seeds of both fuzzers are in testdata/fuzz, written by gen_corpus.go:
// resolver-shaped and hostile messages, and a real exchange of Go's stub
// resolver.

// FuzzObserveUDP: any bytes are recorded or rejected with ErrMalformed,
// never a panic, and leave the Map consistent, bounded, and holding only
// names fit to report.
func FuzzObserveUDP(f *testing.F) {
	f.Add(typical(f))
	f.Fuzz(func(t *testing.T, msg []byte) {
		m := NewMap(Config{MaxEntries: 8})
		added, err := m.ObserveUDP(1, msg, t0)
		if err != nil {
			if !errors.Is(err, ErrMalformed) || !strings.HasPrefix(err.Error(), "dnsnames: ") {
				t.Fatalf("error %q is not ErrMalformed", err)
			}
			if added != 0 || m.Len() != 0 {
				t.Fatalf("malformed message recorded %d", added)
			}
		}
		if added < 0 || added > maxAnswers {
			t.Fatalf("added %d", added)
		}
		check(t, m)

		// Again, later and in another namespace: the message means the
		// same, and the bound holds.
		again, err2 := m.ObserveUDP(2, msg, t0.Add(time.Second))
		if again != added || (err == nil) != (err2 == nil) {
			t.Fatalf("second observation: %d, %v; first %d, %v", again, err2, added, err)
		}
		check(t, m)
		s := m.Stats()
		if s.Recorded != uint64(2*added) || s.Answers > 2*maxAnswers {
			t.Fatalf("stats %+v after adding %d twice", s, added)
		}
	})
}

// FuzzObserveTCP: as FuzzObserveUDP, and a payload that ends inside a
// message says so with ErrTruncated unless an earlier problem came first.
func FuzzObserveTCP(f *testing.F) {
	f.Add(frame(typical(f), typical(f)))
	f.Fuzz(func(t *testing.T, payload []byte) {
		m := NewMap(Config{MaxEntries: 8})
		added, err := m.ObserveTCP(1, payload, t0)
		if err != nil && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrTruncated) {
			t.Fatalf("error %v is neither ErrMalformed nor ErrTruncated", err)
		}
		msgs, cut := 0, false
		for rest := payload; len(rest) > 0; {
			if len(rest) < 2 || int(binary.BigEndian.Uint16(rest)) > len(rest)-2 {
				cut = true
				break
			}
			msgs++
			rest = rest[2+int(binary.BigEndian.Uint16(rest)):]
		}
		s := m.Stats()
		if cut != (s.Truncated == 1) || s.Truncated > 1 {
			t.Fatalf("cut %v, %d truncated", cut, s.Truncated)
		}
		if cut && err == nil {
			t.Fatal("cut payload without an error")
		}
		if s.Malformed > uint64(msgs) || (s.Malformed == 0 && !cut && err != nil) {
			t.Fatalf("%d messages, %d malformed, error %v", msgs, s.Malformed, err)
		}
		if added < 0 || added > msgs*maxAnswers || uint64(added) != s.Recorded {
			t.Fatalf("added %d from %d messages, stats %+v", added, msgs, s)
		}
		check(t, m)
	})
}

// check fails unless the Map's index, recency list and free list agree,
// it holds at most MaxEntries, and every name is one to report.
func check(t *testing.T, m *Map) {
	t.Helper()
	if m.Len() != len(m.index) || m.Len() > m.cfg.MaxEntries || len(m.entries) > m.cfg.MaxEntries {
		t.Fatalf("Len %d, index %d, slots %d, max %d", m.Len(), len(m.index), len(m.entries), m.cfg.MaxEntries)
	}
	n, prev := 0, int32(none)
	var held []entry
	for i := m.head; i != none; i = m.entries[i].next {
		e := &m.entries[i]
		if e.prev != prev || n > len(m.entries) {
			t.Fatalf("recency list broken at %d", i)
		}
		if j, ok := m.index[e.key]; !ok || j != i {
			t.Fatalf("slot %d not indexed", i)
		}
		name := e.name.Value()
		if name == "" || strings.HasSuffix(name, ".") || strings.ToLower(name) != name {
			t.Fatalf("name %q", name)
		}
		for _, c := range []byte(name) {
			if c < 0x21 || c > 0x7e {
				t.Fatalf("name %q", name)
			}
		}
		held = append(held, *e)
		prev, n = i, n+1
	}
	if prev != m.tail || n != m.Len() {
		t.Fatalf("%d on the recency list, Len %d", n, m.Len())
	}
	free := 0
	for i := m.free; i != none; i = m.entries[i].next {
		if free++; free > len(m.entries) {
			t.Fatal("free list loops")
		}
	}
	if free+n != len(m.entries) {
		t.Fatalf("%d free and %d used of %d slots", free, n, len(m.entries))
	}
	for _, e := range held {
		addr := netip.AddrFrom16(e.key.addr).Unmap()
		if got, ok := m.Lookup(e.key.netns, addr, time.Unix(0, e.expires-1)); !ok || got != e.name.Value() {
			t.Fatalf("Lookup(%d, %v) = %q, %v; want %q", e.key.netns, addr, got, ok, e.name.Value())
		}
	}
}

// seed reads a []byte seed of testdata/fuzz.
func seed(t *testing.T, fuzzer, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "fuzz", fuzzer, name))
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(data)), "\n")
	if len(lines) != 2 || lines[0] != "go test fuzz v1" {
		t.Fatalf("%s: not a corpus file", name)
	}
	s, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(lines[1], "[]byte("), ")"))
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return []byte(s)
}

// TestStubExchange reads the answers of the seed corpus's exchange with
// Go's stub resolver as the kernel would hand them over.
func TestStubExchange(t *testing.T) {
	m := NewMap(Config{})
	for _, tc := range []struct {
		seed  string
		added int
	}{
		{"stub-www.example.com-A-response", 2},
		{"stub-www.example.com-AAAA-response", 2},
		{"stub-api.example.com-A-response", 2},
		{"stub-big.example.com-A-response", 0}, // truncated over UDP
		{"stub-missing.example.com-A-response", 0},
		{"stub-www.example.com-A-query", 0},
	} {
		if added, err := m.ObserveUDP(1, seed(t, "FuzzObserveUDP", tc.seed), t0); added != tc.added || err != nil {
			t.Errorf("%s: added %d, %v; want %d", tc.seed, added, err, tc.added)
		}
	}
	if added, err := m.ObserveTCP(1, seed(t, "FuzzObserveTCP", "stub-big.example.com-AAAA-stream"), t0); added != 40 || err != nil {
		t.Errorf("TCP stream: added %d, %v; want 40", added, err)
	}
	for addr, want := range map[string]string{
		"192.0.2.10": "www.example.com", "2001:db8::b": "www.example.com",
		"192.0.2.21": "api.example.com", "2001:db8::64": "big.example.com",
	} {
		if got, _ := m.Lookup(1, netip.MustParseAddr(addr), t0); got != want {
			t.Errorf("%s: %q, want %q", addr, got, want)
		}
	}
}
