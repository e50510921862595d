package collector

import (
	"bytes"
	"encoding/binary"
	"errors"
	"net/netip"
	"reflect"
	"strings"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// record builds a kernel record the way the BPF program lays it out.
// encode lays v out as the kernel writes it to the ring buffer.
func encode[T any](t testing.TB, v T) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := binary.Write(&buf, binary.NativeEndian, &v); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func record(t testing.TB, ev connectEvent) []byte {
	t.Helper()
	return encode(t, ev)
}

func baseEvent() connectEvent {
	ev := connectEvent{
		H: connectHeader{
			Kind: uint8(connectKindKIND_CONNECT), Outcome: uint8(connectOutcomeOUTCOME_ESTABLISHED),
			Family: afInet, Cookie: 0xc0ffee, TsNs: 5_000_000_000,
		},
		Caller: connectCaller{
			CgroupId: 9731, TaskStart: 1_230_000_000, StartNs: 4_000_000_000,
			Tgid: 4242, Tid: 4243, Uid: 1000, Gid: 1001, Netns: 4026531840, LoginUid: 1500, Tty: 1,
		},
		Sport: 43210, Dport: 443,
	}
	copy(ev.Caller.Comm[:], "billing")
	copy(ev.Saddr[:], []byte{10, 0, 3, 7})
	copy(ev.Daddr[:], []byte{10, 96, 0, 15})
	return ev
}

func TestDecode(t *testing.T) {
	v6 := baseEvent()
	v6.H.Family = afInet6
	s6, d6 := netip.MustParseAddr("fd00::1").As16(), netip.MustParseAddr("2001:db8::15").As16()
	v6.Saddr, v6.Daddr = s6, d6

	mapped := baseEvent()
	mapped.H.Family = afInet6
	mapped.Saddr = netip.MustParseAddr("::ffff:10.0.3.7").As16()
	mapped.Daddr = netip.MustParseAddr("::ffff:10.96.0.15").As16()

	closed := func(err unix.Errno) connectEvent {
		ev := baseEvent()
		ev.H.Outcome = uint8(connectOutcomeOUTCOME_CLOSED)
		ev.H.Err = int32(err)
		return ev
	}
	unsent := func(err unix.Errno) connectEvent {
		ev := baseEvent()
		ev.H.Outcome = uint8(connectOutcomeOUTCOME_UNSENT)
		ev.H.Err = int32(err)
		ev.Sport = 0
		ev.Saddr = [16]byte{}
		return ev
	}

	for _, tc := range []struct {
		name     string
		in       connectEvent
		outcome  Outcome
		src, dst string
	}{
		{"ipv4 established", baseEvent(), OutcomeEstablished, "10.0.3.7:43210", "10.96.0.15:443"},
		{"ipv6 established", v6, OutcomeEstablished, "[fd00::1]:43210", "[2001:db8::15]:443"},
		{"ipv4-mapped is ipv4 on the wire", mapped, OutcomeEstablished, "10.0.3.7:43210", "10.96.0.15:443"},
		{"refused", closed(unix.ECONNREFUSED), OutcomeRefused, "10.0.3.7:43210", "10.96.0.15:443"},
		{"timed out", closed(unix.ETIMEDOUT), OutcomeTimeout, "10.0.3.7:43210", "10.96.0.15:443"},
		{"caller gave up", closed(0), OutcomeTimeout, "10.0.3.7:43210", "10.96.0.15:443"},
		{"host unreachable", closed(unix.EHOSTUNREACH), OutcomeUnreachable, "10.0.3.7:43210", "10.96.0.15:443"},
		{"net unreachable", closed(unix.ENETUNREACH), OutcomeUnreachable, "10.0.3.7:43210", "10.96.0.15:443"},
		{"reset", closed(unix.ECONNRESET), OutcomeReset, "10.0.3.7:43210", "10.96.0.15:443"},
		{"other error", closed(unix.EPROTO), OutcomeFailed, "10.0.3.7:43210", "10.96.0.15:443"},
		{"failed before a SYN, no route", unsent(unix.ENETUNREACH), OutcomeUnreachable, "invalid AddrPort", "10.96.0.15:443"},
		{"failed before a SYN, no port", unsent(unix.EADDRNOTAVAIL), OutcomeFailed, "invalid AddrPort", "10.96.0.15:443"},
		{"failed before a SYN, error not kept", unsent(0), OutcomeFailed, "invalid AddrPort", "10.96.0.15:443"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e Event
			if err := e.Decode(record(t, tc.in), 1_000); err != nil {
				t.Fatal(err)
			}
			if e.Outcome != tc.outcome || e.Src.String() != tc.src || e.Dst.String() != tc.dst {
				t.Errorf("got %v %v → %v, want %v %v → %v", e.Outcome, e.Src, e.Dst, tc.outcome, tc.src, tc.dst)
			}
			if e.Errno != unix.Errno(tc.in.H.Err) {
				t.Errorf("errno %v, want %v", e.Errno, unix.Errno(tc.in.H.Err))
			}
			if e.Kind != KindConnect || e.Cookie != 0xc0ffee || e.Time != 5_000_001_000 ||
				e.PID != 4242 || e.TID != 4243 || e.UID != 1000 || e.GID != 1001 ||
				e.CgroupID != 9731 || e.ProcStart != 1_230_000_000 || e.NetNS != 4026531840 || e.CommString() != "billing" ||
				!e.TTY || e.LoginUID != 1500 {
				t.Errorf("fields: %+v", e)
			}
		})
	}
}

func TestDecodeExit(t *testing.T) {
	rec := connectEvent{H: connectHeader{Kind: uint8(connectKindKIND_EXIT), TsNs: 7}, Caller: connectCaller{Tgid: 4242, TaskStart: 1_230_000_000}}
	var e Event
	if err := e.Decode(record(t, rec), 1); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(e, Event{Kind: KindExit, Time: 8, PID: 4242, ProcStart: 1_230_000_000}) {
		t.Errorf("got %+v", e)
	}
}

func TestDecodeRejects(t *testing.T) {
	bad := func(f func(*connectEvent)) []byte {
		ev := baseEvent()
		f(&ev)
		return record(t, ev)
	}
	for _, tc := range []struct {
		name string
		in   []byte
	}{
		{"empty", nil},
		{"short", record(t, baseEvent())[:RecordSize-1]},
		{"long", append(record(t, baseEvent()), 0)},
		{"kind", bad(func(e *connectEvent) { e.H.Kind = 9 })},
		{"family", bad(func(e *connectEvent) { e.H.Family = 1 })},
		{"outcome", bad(func(e *connectEvent) { e.H.Outcome = 0 })},
		{"negative errno", bad(func(e *connectEvent) { e.H.Outcome = 2; e.H.Err = -1 })},
		{"outcome past the last", bad(func(e *connectEvent) { e.H.Outcome = 4 })},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var e Event
			if err := e.Decode(tc.in, 0); !errors.Is(err, ErrMalformed) {
				t.Errorf("got %v, want ErrMalformed", err)
			}
		})
	}
}

func TestDecodeAllocs(t *testing.T) {
	b := record(t, baseEvent())
	var e Event
	if n := testing.AllocsPerRun(1000, func() { e.Decode(b, 0) }); n != 0 {
		t.Errorf("%v allocations per decode, want 0", n)
	}
}

// FuzzDecode: any bytes either decode into a consistent event or give
// ErrMalformed; never a panic.
func FuzzDecode(f *testing.F) {
	f.Add(record(f, baseEvent()))
	ev := baseEvent()
	ev.H.Family = afInet6
	ev.H.Outcome = uint8(connectOutcomeOUTCOME_CLOSED)
	ev.H.Err = int32(unix.ECONNREFUSED)
	f.Add(record(f, ev))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		var e Event
		err := e.Decode(b, 0)
		if err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
			return
		}
		if len(b) != int(unsafe.Sizeof(connectEvent{})) {
			t.Fatalf("decoded %d bytes", len(b))
		}
		if e.Kind == KindExit {
			return
		}
		if e.Kind != KindConnect || e.Outcome == OutcomeUnknown || !e.Dst.IsValid() {
			t.Fatalf("inconsistent event %+v", e)
		}
		if e.Outcome.String() == "unknown" || strings.ContainsRune(e.CommString(), 0) {
			t.Fatalf("bad outcome or comm: %+v", e)
		}
	})
}

func TestCgroup2MountFrom(t *testing.T) {
	for _, tc := range []struct{ name, mountinfo, want string }{
		{"unified", "30 23 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n", "/sys/fs/cgroup"},
		{"hybrid", "25 24 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n" +
			"26 25 0:23 / /sys/fs/cgroup/unified rw shared:9 - cgroup2 cgroup2 rw,nsdelegate\n" +
			"27 25 0:24 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n", "/sys/fs/cgroup/unified"},
		{"prefer the hierarchy's root", "40 1 0:26 /kubepods.slice /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n" +
			"41 1 0:26 / /host/cgroup rw - cgroup2 cgroup2 rw\n", "/host/cgroup"},
		{"escaped space", `30 23 0:26 / /mnt/my\040cgroup rw - cgroup2 cgroup2 rw` + "\n", "/mnt/my cgroup"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := cgroup2MountFrom(strings.NewReader(tc.mountinfo))
			if err != nil || got != tc.want {
				t.Errorf("got %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := cgroup2MountFrom(strings.NewReader("25 24 0:22 / /sys/fs/cgroup ro - tmpfs tmpfs ro\n")); err == nil {
		t.Error("no cgroup2 mount: want an error")
	}
}

func BenchmarkDecode(b *testing.B) {
	rec := record(b, baseEvent())
	var e Event
	b.ReportAllocs()
	for b.Loop() {
		if err := e.Decode(rec, 0); err != nil {
			b.Fatal(err)
		}
	}
}

func startEvent() connectEvent {
	ev := baseEvent()
	ev.H.Kind, ev.H.Outcome = uint8(connectKindKIND_CONNECT_START), 0
	return ev
}

// TestDecodeStartAndOutcome: a start record gives a connect's cookie,
// caller, addresses and start time, and an outcome record the outcome and
// errno for its cookie.
func TestDecodeStartAndOutcome(t *testing.T) {
	cookie, st, err := decodeStart(record(t, startEvent()), 0)
	if err != nil {
		t.Fatal(err)
	}
	var e Event
	st.caller.applyTo(&e)
	if cookie != 0xc0ffee || e.PID != 4242 || e.TID != 4243 || e.CommString() != "billing" || st.dst.Port() != 443 ||
		!st.src.IsValid() || st.time != 5_000_000_000 {
		t.Errorf("start of cookie %#x: %+v, caller %+v", cookie, st, e)
	}
	if _, _, err := decodeStart(record(t, baseEvent()), 0); !errors.Is(err, ErrMalformed) {
		t.Errorf("a connect record as a start: %v, want ErrMalformed", err)
	}

	rec := encode(t, connectHeader{Cookie: 0xc0ffee, TsNs: 7, Err: int32(unix.ECONNREFUSED),
		Kind: uint8(connectKindKIND_OUTCOME), Outcome: uint8(connectOutcomeOUTCOME_CLOSED)})
	o, err := decodeOutcome(rec)
	if err != nil || o.cookie != 0xc0ffee || o.ts != 7 || o.outcome != OutcomeRefused || o.errno != unix.ECONNREFUSED {
		t.Errorf("outcome %+v, %v", o, err)
	}
	for name, b := range map[string][]byte{
		"short":          rec[:len(rec)-1],
		"wrong kind":     encode(t, connectHeader{Kind: uint8(connectKindKIND_EXIT), Outcome: 1}),
		"no outcome":     encode(t, connectHeader{Kind: uint8(connectKindKIND_OUTCOME)}),
		"negative errno": encode(t, connectHeader{Kind: uint8(connectKindKIND_OUTCOME), Outcome: 2, Err: -1}),
	} {
		if _, err := decodeOutcome(b); !errors.Is(err, ErrMalformed) {
			t.Errorf("%s: %v, want ErrMalformed", name, err)
		}
	}
}

// FuzzDecodeJoin: start and outcome records decode to a consistent
// connect or fail with ErrMalformed, whatever the bytes.
func FuzzDecodeJoin(f *testing.F) {
	f.Add(record(f, startEvent()))
	f.Add(encode(f, connectHeader{Cookie: 1, TsNs: 2, Kind: uint8(connectKindKIND_OUTCOME), Outcome: uint8(connectOutcomeOUTCOME_ESTABLISHED)}))
	f.Add(encode(f, connectHeader{Cookie: 1, TsNs: 2, Err: int32(unix.ETIMEDOUT), Kind: uint8(connectKindKIND_OUTCOME), Outcome: uint8(connectOutcomeOUTCOME_CLOSED)}))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		if o, err := decodeOutcome(b); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
		} else if len(b) != headerSize || o.outcome == OutcomeUnknown {
			t.Fatalf("inconsistent outcome %+v from %d bytes", o, len(b))
		}
		if _, st, err := decodeStart(b, 0); err != nil {
			if !errors.Is(err, ErrMalformed) {
				t.Fatalf("error %v is not ErrMalformed", err)
			}
		} else if recordKind(b) != connectKindKIND_CONNECT_START || !st.dst.IsValid() || !st.src.IsValid() || len(b) != recordSize {
			t.Fatalf("inconsistent start %+v", st)
		}
	})
}

// TestRecordsStartWithTheHeader: the read loop takes every record's kind
// from its first byte, which must be its header's.
func TestRecordsStartWithTheHeader(t *testing.T) {
	if off := unsafe.Offsetof(connectEvent{}.H); off != 0 {
		t.Errorf("struct event's header at %d", off)
	}
	if off := unsafe.Offsetof(connectPayloadEvent{}.Ev); off != 0 {
		t.Errorf("struct payload_event's event at %d", off)
	}
	if offKind != 0 {
		t.Errorf("the header's kind at %d", offKind)
	}
	if payloadMax != len(connectPayloadEvent{}.Data) {
		t.Errorf("PAYLOAD_MAX %d, a payload record's data %d", payloadMax, len(connectPayloadEvent{}.Data))
	}
}
