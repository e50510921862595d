package collector

import (
	"os"
	"testing"
	"time"
)

// helloPiece is a ClientHello record as the kernel sends it: the socket's
// cgroup, and no caller.
func helloPiece(t *testing.T, cookie uint64) *payload {
	t.Helper()
	data, err := os.ReadFile("tlshello/testdata/clienthello/curl_h2.bin")
	if err != nil {
		t.Fatal(err)
	}
	return &payload{kind: connectKindKIND_TLS_CLIENT, head: Event{Cookie: cookie, CgroupID: 7}, want: len(data), data: data}
}

// TestHelloTakesConnectCaller: a tls event carries the caller of the
// established connect with its cookie, and one without such a connect is
// still sent, with the socket's cgroup, and counted.
func TestHelloTakesConnectCaller(t *testing.T) {
	var got []Event
	a := newAssembler(func(e *Event) { got = append(got, *e) })
	connect := Event{Kind: KindConnect, Outcome: OutcomeEstablished, Cookie: 1, PID: 42, TID: 43, UID: 1000, GID: 1001,
		CgroupID: 9, ProcStart: 12345, NetNS: 4026531840, Comm: [16]byte{'c', 'u', 'r', 'l'}}
	a.connected(&connect)

	now := time.Now()
	a.add(helloPiece(t, 1), now)
	a.add(helloPiece(t, 2), now)
	a.expire(now.Add(helloWait), false)

	if len(got) != 2 {
		t.Fatalf("%d tls events, want 2", len(got))
	}
	byCookie := map[uint64]Event{got[0].Cookie: got[0], got[1].Cookie: got[1]}
	e := byCookie[1]
	if e.Kind != KindTLS || e.PID != 42 || e.TID != 43 || e.UID != 1000 || e.GID != 1001 || e.CgroupID != 9 ||
		e.ProcStart != 12345 || e.NetNS != 4026531840 || e.CommString() != "curl" || e.Hello == nil {
		t.Errorf("tls event %+v, want the connect's caller and a hello", e)
	}
	if e := byCookie[2]; e.PID != 0 || e.CgroupID != 7 || e.Hello == nil {
		t.Errorf("unattributed tls event %+v, want no process, cgroup 7 and a hello", e)
	}
	if a.stats.Unattributed != 1 || a.stats.ClientHellos != 2 {
		t.Errorf("stats %+v, want 1 unattributed of 2", a.stats)
	}
	if a.callers.Len() != 0 {
		t.Errorf("%d callers kept after their hello, want 0", a.callers.Len())
	}
}
