package collector_test

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/exporter"
	"github.com/callscope/callscope/internal/kerneltest"
	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

func TestMain(m *testing.M) {
	kerneltest.MaybeRunHelper()
	os.Exit(m.Run())
}

// sink gathers what a collector hands on.
type sink struct {
	c      *collector.Collector
	mu     sync.Mutex
	events []collector.Event
	exits  []collector.Event
	dns    []collector.Event
	execs  []collector.Event
	lost   map[string]uint64
	done   chan struct{}
}

func start(t *testing.T) (*collector.Collector, *sink) {
	return startWith(t, collector.Config{FlushInterval: 10 * time.Millisecond}, 0)
}

// startWith starts a collector whose consumer takes delay over each batch.
func startWith(t *testing.T, cfg collector.Config, delay time.Duration) (*collector.Collector, *sink) {
	t.Helper()
	kerneltest.Require(t)
	c, err := collector.Start(cfg)
	if err != nil {
		t.Fatalf("start collector: %+v", err)
	}
	t.Cleanup(func() { c.Close() })
	s := &sink{c: c, lost: map[string]uint64{}, done: make(chan struct{})}
	go func() {
		defer close(s.done)
		for b := range c.Batches() {
			time.Sleep(delay)
			s.mu.Lock()
			for _, e := range b.Events {
				switch e.Kind {
				case collector.KindLoss:
					s.lost[e.LossReason] += e.Lost
					continue
				case collector.KindExit:
					s.exits = append(s.exits, e)
					continue
				case collector.KindDNS:
					s.dns = append(s.dns, e)
					continue
				case collector.KindExec:
					s.execs = append(s.execs, e)
					continue
				}
				s.events = append(s.events, e)
			}
			s.mu.Unlock()
			c.Release(b)
		}
	}()
	return c, s
}

// of returns the events of the given processes.
func (s *sink) of(pids ...int) []collector.Event {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []collector.Event
	for _, e := range s.events {
		if slices.Contains(pids, int(e.PID)) {
			out = append(out, e)
		}
	}
	return out
}

// await waits until the processes have n events, then a little longer so
// that a duplicate would show.
func (s *sink) await(t *testing.T, n int, timeout time.Duration, pids ...int) []collector.Event {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for len(s.of(pids...)) < n && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	evs := s.of(pids...)
	if len(evs) != n {
		t.Fatalf("got %d events from pids %v, want %d: %+v", len(evs), pids, n, evs)
	}
	return evs
}

// listen accepts and closes connections, reporting each client's address.
func listen(t *testing.T, network, addr string) (netip.AddrPort, <-chan netip.AddrPort) {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	clients := make(chan netip.AddrPort, 1<<16)
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			clients <- conn.RemoteAddr().(*net.TCPAddr).AddrPort()
			conn.Close()
		}
	}()
	return ln.Addr().(*net.TCPAddr).AddrPort(), clients
}

func netnsInode(t *testing.T, path string) uint32 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

func comm() string {
	c := filepath.Base(os.Args[0])
	return c[:min(len(c), 15)]
}

func TestConnectEstablished(t *testing.T) {
	_, s := start(t)
	cg := kerneltest.NewCgroup(t, "established")
	v4, clients4 := listen(t, "tcp4", "127.0.0.1:0")
	v6, clients6 := listen(t, "tcp6", "[::1]:0")

	before := time.Now()
	pid, res := kerneltest.Connect{Addrs: []netip.AddrPort{v4, v6}, Cgroup: cg}.Run(t)
	if want := []string{v4.String() + "=ok", v6.String() + "=ok"}; !slices.Equal(res, want) {
		t.Fatalf("helper said %v, want %v", res, want)
	}
	src := map[netip.AddrPort]netip.AddrPort{v4: <-clients4, v6: <-clients6}

	evs := s.await(t, 2, 5*time.Second, pid)
	netns := netnsInode(t, "/proc/self/ns/net")
	for _, e := range evs {
		want, ok := src[e.Dst]
		if !ok {
			t.Fatalf("event to %v, want one of %v", e.Dst, src)
		}
		delete(src, e.Dst) // exactly one each
		if e.Src != want {
			t.Errorf("src %v, want %v", e.Src, want)
		}
		if e.Kind != collector.KindConnect || e.Outcome != collector.OutcomeEstablished || e.Errno != 0 {
			t.Errorf("kind %v outcome %v errno %v, want connect established 0", e.Kind, e.Outcome, e.Errno)
		}
		if e.CommString() != comm() {
			t.Errorf("comm %q, want %q", e.CommString(), comm())
		}
		if e.TID == 0 || e.UID != 0 {
			t.Errorf("tid %d uid %d", e.TID, e.UID)
		}
		if e.CgroupID != cg.ID {
			t.Errorf("cgroup id %d, want %d", e.CgroupID, cg.ID)
		}
		if e.NetNS != netns {
			t.Errorf("netns %d, want %d", e.NetNS, netns)
		}
		if e.Cookie == 0 {
			t.Error("no socket cookie")
		}
		if tm := time.Unix(0, e.Time); tm.Before(before.Add(-time.Second)) || tm.After(time.Now().Add(time.Second)) {
			t.Errorf("time %v outside the test's run", tm)
		}
		// /proc gives the start in ticks (1/100 s): the child cannot have
		// started before this test process.
		if e.ProcStart/1e7 < selfStartTicks(t) {
			t.Errorf("process start %d ns before the test's own", e.ProcStart)
		}
	}
	if evs[0].Cookie == evs[1].Cookie {
		t.Error("two connections share a cookie")
	}
	if evs[0].Dst.Addr().Is4() == evs[1].Dst.Addr().Is4() {
		t.Error("want one IPv4 and one IPv6 event")
	}
}

// TestCallerUser: a connect names the uid and gid of the thread that made
// it, not those of whoever else shares its cgroup (root, here).
func TestCallerUser(t *testing.T) {
	_, s := start(t)
	cg := kerneltest.NewCgroup(t, "user")
	dst, _ := listen(t, "tcp4", "127.0.0.1:0")
	user := &kerneltest.User{UID: 4242, GID: 4343}
	pid, res := kerneltest.Connect{Addrs: []netip.AddrPort{dst}, Cgroup: cg, User: user}.Run(t)
	if want := []string{dst.String() + "=ok"}; !slices.Equal(res, want) {
		t.Fatalf("helper said %v, want %v", res, want)
	}
	e := s.await(t, 1, 5*time.Second, pid)[0]
	if e.UID != uint32(user.UID) || e.GID != uint32(user.GID) {
		t.Errorf("uid %d gid %d, want %d %d", e.UID, e.GID, user.UID, user.GID)
	}
	if e.CommString() != comm() {
		t.Errorf("comm %q, want %q", e.CommString(), comm())
	}
}

// TestProcessExit: when a caller ends, an exit record names it by the same
// pid and start time as its events, so its cached facts can go.
// TestCallerSession: a connect carries whether its process has a
// controlling terminal and its login uid, as a person's session has them,
// and one without either says so.
func TestCallerSession(t *testing.T) {
	_, s := start(t)
	cg := kerneltest.NewCgroup(t, "session")
	dst, _ := listen(t, "tcp4", "127.0.0.1:0")
	own, audit := loginUID(t)
	login := uint32(4711)
	for _, tc := range []struct {
		name     string
		tty      bool
		loginUID *uint32
		wantUID  uint32
	}{
		{"neither", false, nil, own},
		{"a terminal", true, nil, own},
		{"a login", false, &login, login},
		{"both", true, &login, login},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.loginUID != nil && !audit {
				t.Skip("this kernel keeps no login uid (CONFIG_AUDIT)")
			}
			pid, res := kerneltest.Connect{Addrs: []netip.AddrPort{dst}, Cgroup: cg, TTY: tc.tty, LoginUID: tc.loginUID}.Run(t)
			if want := []string{dst.String() + "=ok"}; !slices.Equal(res, want) {
				t.Fatalf("helper said %v, want %v", res, want)
			}
			e := s.await(t, 1, 5*time.Second, pid)[0]
			if e.TTY != tc.tty || e.LoginUID != tc.wantUID {
				t.Errorf("tty %v login uid %d, want %v %d", e.TTY, e.LoginUID, tc.tty, tc.wantUID)
			}
		})
	}
}

// loginUID is this process's login uid, which its children inherit, and
// whether the kernel keeps one (CONFIG_AUDIT): without, every connect
// carries LoginUIDUnset.
func loginUID(t *testing.T) (uint32, bool) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/loginuid")
	if errors.Is(err, os.ErrNotExist) {
		return collector.LoginUIDUnset, false
	} else if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 32)
	if err != nil {
		t.Fatal(err)
	}
	return uint32(n), true
}

func TestProcessExit(t *testing.T) {
	_, s := start(t)
	dst, _ := listen(t, "tcp4", "127.0.0.1:0")
	pid, _ := kerneltest.Connect{Addrs: []netip.AddrPort{dst}}.Run(t)
	e := s.await(t, 1, 5*time.Second, pid)[0]
	deadline := time.Now().Add(5 * time.Second)
	for {
		s.mu.Lock()
		var exits []collector.Event
		for _, x := range s.exits {
			if x.PID == uint32(pid) {
				exits = append(exits, x)
			}
		}
		s.mu.Unlock()
		if len(exits) == 1 {
			if exits[0].ProcStart != e.ProcStart {
				t.Errorf("exit start time %d, connect's %d", exits[0].ProcStart, e.ProcStart)
			}
			return
		}
		if len(exits) > 1 || time.Now().After(deadline) {
			t.Fatalf("%d exit records for pid %d, want 1 (a multi-threaded process exits once)", len(exits), pid)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestConnectRefused(t *testing.T) {
	_, s := start(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()

	pid, res := kerneltest.Connect{Addrs: []netip.AddrPort{closed}}.Run(t)
	if res[0] != closed.String()+"=ECONNREFUSED" {
		t.Fatalf("helper said %v", res)
	}
	e := s.await(t, 1, 5*time.Second, pid)[0]
	if e.Outcome != collector.OutcomeRefused || e.Errno != unix.ECONNREFUSED || e.Dst != closed {
		t.Errorf("got outcome %v errno %v dst %v, want refused ECONNREFUSED %v", e.Outcome, e.Errno, e.Dst, closed)
	}
	if !e.Src.Addr().IsLoopback() || e.Src.Port() == 0 {
		t.Errorf("src %v: a SYN was sent, so a source was chosen", e.Src)
	}
}

// TestConnectNoAnswer covers the outcomes that need a peer elsewhere: one
// that drops the SYN (timeout), and one that answers ICMP host unreachable.
func TestConnectNoAnswer(t *testing.T) {
	_, s := start(t)
	peer := kerneltest.NewPeer(t)

	drop := netip.AddrPortFrom(peer.Addr, kerneltest.DropPort)
	unreach := netip.AddrPortFrom(peer.Addr, kerneltest.UnreachablePort)
	// Two SYNs, then ETIMEDOUT after about 3 s rather than the default 2 min.
	pid, res := kerneltest.Connect{Addrs: []netip.AddrPort{drop, unreach}, SynCnt: 1}.Run(t)
	if want := []string{drop.String() + "=ETIMEDOUT", unreach.String() + "=EHOSTUNREACH"}; !slices.Equal(res, want) {
		t.Fatalf("helper said %v, want %v", res, want)
	}
	evs := s.await(t, 2, 5*time.Second, pid)
	byDst := map[netip.AddrPort]collector.Event{}
	for _, e := range evs {
		byDst[e.Dst] = e
	}
	if e := byDst[drop]; e.Outcome != collector.OutcomeTimeout || e.Errno != unix.ETIMEDOUT || e.Src.Addr() != peer.Local {
		t.Errorf("dropped SYN: outcome %v errno %v src %v, want timeout ETIMEDOUT from %v", e.Outcome, e.Errno, e.Src, peer.Local)
	}
	if e := byDst[unreach]; e.Outcome != collector.OutcomeUnreachable || e.Errno != unix.EHOSTUNREACH {
		t.Errorf("ICMP unreachable: outcome %v errno %v, want unreachable EHOSTUNREACH", e.Outcome, e.Errno)
	}
}

// noRoute is an address the peer's namespace has no route to: only the
// peer's /30 is routed there, so connect(2) fails before any SYN.
var noRoute = netip.MustParseAddrPort("203.0.113.7:443")

// TestConnectUnsent: a connect that fails inside connect(2), before a SYN,
// is reported when its socket is released, with the caller and the
// destination it was called with. Without SyscallErrors the kernel keeps
// no error for it.
func TestConnectUnsent(t *testing.T) {
	_, s := start(t)
	peer := kerneltest.NewPeer(t)
	pid, res := kerneltest.Connect{Addrs: []netip.AddrPort{noRoute}, NetNS: peer.NetNS}.Run(t)
	if res[0] != noRoute.String()+"=ENETUNREACH" {
		t.Fatalf("helper said %v", res)
	}
	e := s.await(t, 1, 5*time.Second, pid)[0]
	if e.Outcome != collector.OutcomeFailed || e.Errno != 0 || e.Dst != noRoute {
		t.Errorf("no route: outcome %v errno %v dst %v, want failed without errno to %v", e.Outcome, e.Errno, e.Dst, noRoute)
	}
	checkUnsent(t, e, peer, pid)
}

func checkUnsent(t *testing.T, e collector.Event, peer *kerneltest.Peer, pid int) {
	t.Helper()
	if e.Src.IsValid() {
		t.Errorf("src %v for a connect that sent no SYN", e.Src)
	}
	if want := netnsInode(t, peer.NetNS); e.NetNS != want {
		t.Errorf("netns %d, want the peer's %d", e.NetNS, want)
	}
	if e.Cookie == 0 || e.PID != uint32(pid) || e.TID == 0 || e.CommString() != comm() || e.ProcStart == 0 || e.Time == 0 {
		t.Errorf("caller: cookie %d pid %d tid %d comm %q start %d time %d, want pid %d", e.Cookie, e.PID, e.TID, e.CommString(), e.ProcStart, e.Time, pid)
	}
}

// TestConnectUnsentErrors: with SyscallErrors, a connect that failed
// before its SYN gets connect(2)'s error; connects that sent their SYN are
// reported once, by their outcome, whatever the syscall returned.
func TestConnectUnsentErrors(t *testing.T) {
	c, s := startWith(t, collector.Config{FlushInterval: 10 * time.Millisecond, SyscallErrors: true}, 0)
	if !hasFeature(c, collector.FeatureUnsentErrors) {
		t.Fatalf("features %+v: unsent connect errors asked for but off", c.Features())
	}
	peer := kerneltest.NewPeer(t)
	pid, res := kerneltest.Connect{Addrs: []netip.AddrPort{noRoute}, NetNS: peer.NetNS}.Run(t)
	if res[0] != noRoute.String()+"=ENETUNREACH" {
		t.Fatalf("helper said %v", res)
	}
	e := s.await(t, 1, 5*time.Second, pid)[0]
	if e.Outcome != collector.OutcomeUnreachable || e.Errno != unix.ENETUNREACH || e.Dst != noRoute {
		t.Errorf("no route: outcome %v errno %v dst %v", e.Outcome, e.Errno, e.Dst)
	}
	checkUnsent(t, e, peer, pid)

	refused := closedPort(t)
	pid, res = kerneltest.Connect{Addrs: []netip.AddrPort{refused}}.Run(t)
	if res[0] != refused.String()+"=ECONNREFUSED" {
		t.Fatalf("helper said %v", res)
	}
	if e := s.await(t, 1, 5*time.Second, pid)[0]; e.Outcome != collector.OutcomeRefused || !e.Src.IsValid() {
		t.Errorf("refused: %+v", e)
	}
}

// TestConnectUnsentRetried: each connect(2) on one socket that fails
// before its SYN is an attempt of its own, and each is reported.
func TestConnectUnsentRetried(t *testing.T) {
	_, s := start(t)
	peer := kerneltest.NewPeer(t)
	pid, res := kerneltest.Connect{Addrs: []netip.AddrPort{noRoute}, NetNS: peer.NetNS, Attempts: 3}.Run(t)
	if res[0] != noRoute.String()+"=ENETUNREACH" {
		t.Fatalf("helper said %v", res)
	}
	evs := s.await(t, 3, 5*time.Second, pid)
	for _, e := range evs {
		if e.Outcome != collector.OutcomeFailed || e.Dst != noRoute || e.Cookie != evs[0].Cookie {
			t.Errorf("attempt %+v, want a failure to %v on socket %d", e, noRoute, evs[0].Cookie)
		}
	}
}

// TestConnectPolled: a caller that polls its nonblocking connect by
// calling connect(2) again gets the first attempt's error from it; that
// call sends nothing, and the connect is reported once, by its outcome.
func TestConnectPolled(t *testing.T) {
	_, s := start(t)
	refused := closedPort(t)
	addr, _ := listen(t, "tcp4", "127.0.0.1:0")
	pid, res := kerneltest.Connect{Addrs: []netip.AddrPort{refused, addr}, Poll: true}.Run(t)
	if want := []string{refused.String() + "=ECONNREFUSED", addr.String() + "=ok"}; !slices.Equal(res, want) {
		t.Fatalf("helper said %v, want %v", res, want)
	}
	evs := s.await(t, 2, 5*time.Second, pid)
	byDst := map[netip.AddrPort]collector.Event{}
	for _, e := range evs {
		byDst[e.Dst] = e
	}
	if e := byDst[refused]; e.Outcome != collector.OutcomeRefused {
		t.Errorf("refused: %+v", e)
	}
	if e := byDst[addr]; e.Outcome != collector.OutcomeEstablished {
		t.Errorf("established: %+v", e)
	}
}

func hasFeature(c *collector.Collector, name string) bool {
	return slices.ContainsFunc(c.Features(), func(f collector.Feature) bool { return f.Name == name && f.Available })
}

// closedPort returns a loopback address where nothing listens.
func closedPort(t *testing.T) netip.AddrPort {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	return closed
}

// TestConnectConcurrent checks that nothing is lost or doubled: events plus
// counted losses equal the connects made.
func TestConnectConcurrent(t *testing.T) {
	c, s := start(t)
	dst, _ := listen(t, "tcp4", "127.0.0.1:0")
	const procs, each = 8, 500

	var wg sync.WaitGroup
	pids := make([]int, procs)
	for i := range procs {
		wg.Go(func() {
			pids[i], _ = kerneltest.Connect{Addrs: []netip.AddrPort{dst}, Repeat: each}.Run(t)
		})
	}
	wg.Wait()
	time.Sleep(50 * time.Millisecond)
	if err := c.Close(); err != nil { // drains the ring buffer
		t.Fatal(err)
	}
	<-s.done

	evs := s.of(pids...)
	cookies := map[uint64]bool{}
	for _, e := range evs {
		if cookies[e.Cookie] {
			t.Fatalf("cookie %d reported twice", e.Cookie)
		}
		cookies[e.Cookie] = true
		if e.Outcome != collector.OutcomeEstablished || e.Dst != dst {
			t.Fatalf("unexpected event %+v", e)
		}
	}
	var lost uint64
	for _, n := range s.lost {
		lost += n
	}
	t.Logf("%d connects: %d events, %d lost %v", procs*each, len(evs), lost, s.lost)
	if len(evs) > procs*each || uint64(len(evs))+lost < procs*each {
		t.Errorf("%d events + %d lost, want %d connects", len(evs), lost, procs*each)
	}
	for _, l := range c.Stats().Lost {
		if l.Count != s.lost[l.Reason] {
			t.Errorf("stats say %d lost for %s, the stream %d", l.Count, l.Reason, s.lost[l.Reason])
		}
	}
}

// TestLossesAreCountedExactly overwhelms a one-page ring buffer, which the
// reader drains only every 100 ms, and a one-batch queue with a slow
// consumer. The collector watches only the test's cgroup, so every connect
// it sees is the helper's: each is delivered or counted lost, exactly once
// (kernel + queue losses + delivered = connects made), and the stream's
// loss events, Stats and the Prometheus counters all say the same. A
// connect whose outcome the kernel lost is counted then, and not again
// when its start expires. A second collector on the cgroup2 root, as in a
// rolling update, tracks the same sockets, and changes none of the counts.
func TestLossesAreCountedExactly(t *testing.T) {
	kerneltest.Require(t)
	cg := kerneltest.NewCgroup(t, "losses")
	start(t)
	page := os.Getpagesize()
	c, s := startWith(t, collector.Config{
		CgroupRoot: cg.Path, RingBufferBytes: page, WakeupBytes: 2 * page,
		BatchSize: 4, QueueBatches: 1, FlushInterval: 100 * time.Millisecond,
		ConnExpiry: 300 * time.Millisecond,
	}, 2*time.Millisecond)
	dst, _ := listen(t, "tcp4", "127.0.0.1:0")
	const connects = 3000
	pid, _ := kerneltest.Connect{Addrs: []netip.AddrPort{dst}, Repeat: connects, Cgroup: cg}.Run(t)
	// Every start still waiting is one whose outcome was lost: let them
	// expire.
	time.Sleep(400 * time.Millisecond)
	c.Sweep()
	time.Sleep(300 * time.Millisecond)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	<-s.done

	delivered := len(s.events)
	if n := len(s.of(pid)); n != delivered {
		t.Fatalf("%d events, %d of them the helper's: the collector saw outside its cgroup", delivered, n)
	}
	var lost uint64
	for _, n := range s.lost {
		lost += n
	}
	t.Logf("%d connects: %d delivered, lost %v", connects, delivered, s.lost)
	if s.lost[collector.ReasonRingBufferFull] == 0 || s.lost[collector.ReasonQueueFull] == 0 {
		t.Errorf("want losses both in the ring buffer and in the queue, got %v", s.lost)
	}
	if uint64(delivered)+lost != connects {
		t.Errorf("%d delivered + %d lost = %d, want exactly %d connects", delivered, lost, uint64(delivered)+lost, connects)
	}
	metrics := lostMetrics(t, c)
	for _, l := range c.Stats().Lost {
		if l.Count != s.lost[l.Reason] {
			t.Errorf("stats say %d lost for %s, the stream %d", l.Count, l.Reason, s.lost[l.Reason])
		}
		if m := metrics[l.Stage+"/"+l.Reason]; m != float64(l.Count) {
			t.Errorf("callscope_events_lost_total{stage=%q,reason=%q} is %v, stats %d", l.Stage, l.Reason, m, l.Count)
		}
	}
}

// TestLostOutcomeCountedOnce: connects whose starts fill the ring buffer
// get their outcomes only once it is full, before the reader drains it.
// Each such connect is counted lost once, when its outcome is lost, and
// not again when its start, read later, expires unanswered.
func TestLostOutcomeCountedOnce(t *testing.T) {
	kerneltest.Require(t)
	cg := kerneltest.NewCgroup(t, "outcomes")
	// A ring of 16 pages holds 481 starts (136 bytes each, with their
	// header), fewer the exec records of the node's processes, which
	// take room too; 600 overfill it. The SYNs time out after about 3 s.
	const ring, connects = 16 << 12, 600
	c, s := startWith(t, collector.Config{
		CgroupRoot: cg.Path, RingBufferBytes: ring, WakeupBytes: 2 * ring,
		FlushInterval: 5 * time.Second, ConnExpiry: 100 * time.Millisecond,
	}, 0)
	peer := kerneltest.NewPeer(t)
	drop := netip.AddrPortFrom(peer.Addr, kerneltest.DropPort)
	_, res := kerneltest.Connect{Addrs: []netip.AddrPort{drop}, Repeat: connects, SynCnt: 1, Concurrent: true, Cgroup: cg}.Run(t)
	if len(res) != connects || slices.ContainsFunc(res, func(r string) bool { return r != drop.String()+"=ETIMEDOUT" }) {
		t.Fatalf("helper said %v", res)
	}
	// The first drain reads the starts, then sweeps them: every one has
	// waited past ConnExpiry, and none has an outcome to come.
	c.Sweep()
	time.Sleep(5 * time.Second)
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	<-s.done

	var lost uint64
	for _, n := range s.lost {
		lost += n
	}
	t.Logf("%d connects: %d delivered, lost %v", connects, len(s.events), s.lost)
	if uint64(len(s.events))+lost != connects || s.lost[collector.ReasonConnExpired] != 0 {
		t.Errorf("%d delivered, lost %v: want %d in all, none of them expired", len(s.events), s.lost, connects)
	}
	if n := c.Stats().OutcomesLost; n == 0 {
		t.Errorf("no outcome lost: the starts never filled the ring")
	}
}

// lostMetrics returns callscope_events_lost_total, by stage/reason, as
// the agent's metrics export c's counts.
func lostMetrics(t *testing.T, c *collector.Collector) map[string]float64 {
	t.Helper()
	mfs, err := exporter.NewMetrics(exporter.Sources{Collector: c.Stats}).Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "callscope_events_lost_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			var stage, reason string
			for _, l := range m.GetLabel() {
				switch l.GetName() {
				case "stage":
					stage = l.GetValue()
				case "reason":
					reason = l.GetValue()
				}
			}
			out[stage+"/"+reason] = m.GetCounter().GetValue()
		}
	}
	return out
}

// TestCloseReleasesEverything checks that Close leaves no program, map,
// attachment or file descriptor behind.
func TestCloseReleasesEverything(t *testing.T) {
	kerneltest.Require(t)
	fdsBefore := openFDs(t)
	c, err := collector.Start(collector.Config{})
	if err != nil {
		t.Fatalf("%+v", err)
	}
	progs, maps := c.ObjectIDs()
	go func() {
		for b := range c.Batches() {
			c.Release(b)
		}
	}()
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
	if fds := openFDs(t); fds > fdsBefore {
		t.Errorf("%d file descriptors open after Close, %d before", fds, fdsBefore)
	}
	// The kernel frees objects once their last reference is gone (after an
	// RCU grace period).
	deadline := time.Now().Add(5 * time.Second)
	for _, id := range progs {
		for {
			p, err := ebpf.NewProgramFromID(id)
			if errors.Is(err, os.ErrNotExist) {
				break
			}
			if err == nil {
				p.Close()
			}
			if time.Now().After(deadline) {
				t.Fatalf("program %d still loaded after Close", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	for _, id := range maps {
		for {
			m, err := ebpf.NewMapFromID(id)
			if errors.Is(err, os.ErrNotExist) {
				break
			}
			if err == nil {
				m.Close()
			}
			if time.Now().After(deadline) {
				t.Fatalf("map %d still exists after Close", id)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
}

func selfStartTicks(t *testing.T) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/self/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	v, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestTwoCollectors: two agents at once (a rolling update) each see every
// connect; neither disturbs the other's callbacks.
func TestTwoCollectors(t *testing.T) {
	_, s1 := start(t)
	_, s2 := start(t)
	dst, _ := listen(t, "tcp4", "127.0.0.1:0")
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := ln.Addr().(*net.TCPAddr).AddrPort()
	ln.Close()
	pid, _ := kerneltest.Connect{Addrs: []netip.AddrPort{dst, closed}}.Run(t)
	for _, s := range []*sink{s1, s2} {
		evs := s.await(t, 2, 5*time.Second, pid)
		if evs[0].Outcome != collector.OutcomeEstablished || evs[1].Outcome != collector.OutcomeRefused {
			t.Errorf("outcomes %v, %v; want established, refused", evs[0].Outcome, evs[1].Outcome)
		}
	}
}

// TestInFlightFull: connects beyond MaxInFlight awaiting their outcome are
// counted as lost, and the others still give their events.
func TestInFlightFull(t *testing.T) {
	_, s := startWith(t, collector.Config{FlushInterval: 10 * time.Millisecond, MaxInFlight: 2}, 0)
	peer := kerneltest.NewPeer(t)
	drop := netip.AddrPortFrom(peer.Addr, kerneltest.DropPort)
	const n = 4
	pids := make(chan int, n)
	var wg sync.WaitGroup
	for range n {
		wg.Go(func() {
			// Each SYN waits about 3 s for an answer that never comes.
			pid, _ := kerneltest.Connect{Addrs: []netip.AddrPort{drop}, SynCnt: 1}.Run(t)
			pids <- pid
		})
	}
	wg.Wait()
	close(pids)
	addr, _ := listen(t, "tcp", "127.0.0.1:0")
	after, _ := kerneltest.Connect{Addrs: []netip.AddrPort{addr}}.Run(t)
	s.await(t, 1, 5*time.Second, after)

	s.mu.Lock()
	defer s.mu.Unlock()
	events := 0
	for pid := range pids {
		for _, e := range s.events {
			if int(e.PID) == pid && e.Outcome == collector.OutcomeTimeout {
				events++
			}
		}
	}
	full := s.lost[collector.ReasonConnFull]
	if full == 0 || events == 0 || uint64(events)+full < n {
		t.Errorf("%d timeouts reported and %d connects lost as conn_full, want some of each and %d in all", events, full, n)
	}
}

// TestSweepExpired: a connect whose outcome does not come within
// ConnExpiry is forgotten and counted as lost, not kept for ever; its late
// outcome then gives no event.
func TestSweepExpired(t *testing.T) {
	c, s := startWith(t, collector.Config{FlushInterval: 10 * time.Millisecond, ConnExpiry: 100 * time.Millisecond}, 0)
	peer := kerneltest.NewPeer(t)
	drop := netip.AddrPortFrom(peer.Addr, kerneltest.DropPort)
	swept := make(chan struct{})
	go func() {
		defer close(swept)
		time.Sleep(time.Second) // the SYN is out, its answer never comes
		c.Sweep()
	}()
	// Two SYNs, then ETIMEDOUT after about 3 s.
	pid, res := kerneltest.Connect{Addrs: []netip.AddrPort{drop}, SynCnt: 1}.Run(t)
	<-swept
	if want := drop.String() + "=ETIMEDOUT"; res[0] != want {
		t.Fatalf("helper said %v, want %s", res, want)
	}
	// A later connect's event shows the timeout's outcome was read.
	addr, _ := listen(t, "tcp", "127.0.0.1:0")
	after, _ := kerneltest.Connect{Addrs: []netip.AddrPort{addr}}.Run(t)
	s.await(t, 1, 5*time.Second, after)

	s.mu.Lock()
	defer s.mu.Unlock()
	if n := s.lost[collector.ReasonConnExpired]; n == 0 {
		t.Errorf("no expired connect reported")
	}
	for _, e := range s.events {
		if int(e.PID) == pid {
			t.Errorf("event for a swept connect: %+v", e)
		}
	}
}
