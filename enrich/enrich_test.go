package enrich

import (
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/internal/kerneltest"
)

func TestParseStat(t *testing.T) {
	tail := " S 1 4242 4242 0 -1 4194560 200 0 0 0 1 2 0 0 20 0 1 0 98765 1000 100"
	for _, tc := range []struct {
		name  string
		stat  string
		ppid  uint32
		start uint64
		ok    bool
	}{
		{"plain", "4242 (billing)" + tail, 1, 98765, true},
		{"comm with spaces and parens", "4242 (a) b (c)" + tail, 1, 98765, true},
		{"comm with newline", "4242 (a\nb)" + tail, 1, 98765, true},
		{"no comm", "4242 billing" + tail, 0, 0, false},
		{"truncated", "4242 (billing) S 1 2 3", 0, 0, false},
		{"bad start", "4242 (billing) S 1 4242 4242 0 -1 4194560 200 0 0 0 1 2 0 0 20 0 1 0 x 1000", 0, 0, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ppid, start, err := parseStat([]byte(tc.stat))
			if (err == nil) != tc.ok || ppid != tc.ppid || start != tc.start {
				t.Errorf("got %d %d %v, want %d %d ok=%v", ppid, start, err, tc.ppid, tc.start, tc.ok)
			}
		})
	}
}

func FuzzParseStat(f *testing.F) {
	f.Add([]byte("4242 (billing) S 1 4242 4242 0 -1 4194560 200 0 0 0 1 2 0 0 20 0 1 0 98765 1000 100"))
	f.Add([]byte("1 ((sd-pam)) S 0 1 1 0 -1 4194560 200 0 0 0 1 2 0 0 20 0 1 0 5 1000 100\n"))
	f.Add([]byte(")"))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseStat(b) // must not panic
	})
}

func TestSplitCmdline(t *testing.T) {
	for in, want := range map[string][]string{
		"":                       nil,
		"\x00":                   nil,
		"/bin/sh\x00-c\x00x\x00": {"/bin/sh", "-c", "x"},
		"nginx: worker":          {"nginx: worker"}, // rewritten argv, no NULs
		"a\x00\x00b\x00":         {"a", "", "b"},
	} {
		if got := splitCmdline([]byte(in)); !slices.Equal(got, want) {
			t.Errorf("%q: got %q, want %q", in, got, want)
		}
	}
}

// startTicks reads a live process's start time as /proc gives it.
func startTicks(t *testing.T, pid int) uint64 {
	t.Helper()
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		t.Fatal(err)
	}
	_, start, err := parseStat(b)
	if err != nil {
		t.Fatal(err)
	}
	return start
}

func TestProcCache(t *testing.T) {
	sleep := exec.Command("sleep", "30")
	if err := sleep.Start(); err != nil {
		t.Fatal(err)
	}
	defer sleep.Process.Kill()
	pid := uint32(sleep.Process.Pid)
	// Start returns while execve may still be setting up the arguments.
	for i := 0; i < 100; i++ {
		if b, _ := os.ReadFile("/proc/" + strconv.Itoa(sleep.Process.Pid) + "/cmdline"); len(b) > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	startNS := startTicks(t, sleep.Process.Pid) * (1e9 / userHZ)
	exe, err := filepath.EvalSymlinks(sleep.Path)
	if err != nil {
		t.Fatal(err)
	}

	c := newProcCache("/proc", 8)
	p, hit := c.get(pid, startNS+123, 1000) // within the same tick
	if p == nil || hit {
		t.Fatalf("first lookup: %+v hit=%v", p, hit)
	}
	if p.Exe != exe || !slices.Equal(p.Cmdline, []string{"sleep", "30"}) || p.PPID != uint32(os.Getpid()) {
		t.Errorf("got %+v, want exe %s, cmdline [sleep 30], ppid %d", p.Process, exe, os.Getpid())
	}
	if id := p.identity(1000); id != "exe:"+exe+" uid:1000" {
		t.Errorf("identity %q", id)
	}
	if p2, hit := c.get(pid, startNS, 1000); p2 != p || !hit {
		t.Errorf("second lookup missed the cache")
	}

	// Same PID, another start time: a reused PID must not get this process.
	if p, _ := c.get(pid, startNS-1e9, 1000); p != nil {
		t.Errorf("a process that started a second earlier got %+v", p.Process)
	}

	// Once gone, the process is remembered as gone.
	sleep.Process.Kill()
	sleep.Wait()
	c2 := newProcCache("/proc", 8)
	if p, hit := c2.get(pid, startNS, 1000); p != nil || hit {
		t.Errorf("exited process: %+v hit=%v", p, hit)
	}
	if p, hit := c2.get(pid, startNS, 1000); p != nil || !hit {
		t.Errorf("exited process, second lookup: %+v hit=%v", p, hit)
	}
}

// TestProcCacheExitingProcess: a process read as it exits has its exe
// still but an empty cmdline, its memory gone; it keeps execve's
// arguments. A /proc of its own stands for the kernel's, in that moment.
func TestProcCacheExitingProcess(t *testing.T) {
	root := t.TempDir()
	const pid, startNS = 4242, 98_765 * (1e9 / userHZ)
	dir := filepath.Join(root, "4242")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	stat := "4242 (curl) Z 1 4242 4242 0 -1 4194560 200 0 0 0 1 2 0 0 20 0 1 0 98765 1000 100"
	if err := os.WriteFile(filepath.Join(dir, "stat"), []byte(stat), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "cmdline"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("/usr/bin/curl", filepath.Join(dir, "exe")); err != nil {
		t.Fatal(err)
	}
	c := newProcCache(root, 8)
	c.execed(pid, startNS, &collector.Exec{Path: "curl", Args: []string{"curl", "-s", "http://x/"}, PPID: 1})
	p, _ := c.get(pid, startNS, 0)
	if p == nil || p.Exe != "/usr/bin/curl" || !slices.Equal(p.Cmdline, []string{"curl", "-s", "http://x/"}) {
		t.Errorf("got %+v, want /proc's exe and execve's arguments", p)
	}
}

func TestProcCacheBounded(t *testing.T) {
	c := newProcCache("/nonexistent", 10)
	for i := range 1000 {
		c.get(uint32(i), 0, 0)
	}
	if n := c.entries.Len(); n > 10 {
		t.Errorf("%d entries cached, max 10", n)
	}
}

func newTestEnricher(t *testing.T) *Enricher {
	t.Helper()
	kerneltest.Require(t)
	root, err := collector.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	e, err := New(Config{CgroupRoot: root, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func TestCgroupPath(t *testing.T) {
	e := newTestEnricher(t)
	cg := kerneltest.NewCgroup(t, "kubepods.slice/odd name:with,chars")

	for _, byHandle := range []bool{true, false} {
		r, err := newCgroupResolver(e.cgroups.root, 16, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatal(err)
		}
		r.byHandle = byHandle
		e, hit := r.entry(cg.ID)
		if e.path != cg.Rel || hit {
			t.Errorf("byHandle=%v: got %q hit=%v, want %q", byHandle, e.path, hit, cg.Rel)
		}
		if e, hit := r.entry(cg.ID); e.path != cg.Rel || !hit {
			t.Errorf("byHandle=%v: second lookup %q hit=%v", byHandle, e.path, hit)
		}
		if e, _ := r.entry(1); e.path != "/" && byHandle {
			t.Errorf("root cgroup: %q", e.path)
		}
		r.close()
	}

	// A miss while a walk is not due yet is not remembered as gone.
	walker, err := newCgroupResolver(e.cgroups.root, 16, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer walker.close()
	walker.byHandle = false
	walker.lastWalk = time.Now()
	if e, _ := walker.entry(cg.ID); e.path != "" {
		t.Errorf("rate-limited walk: %q", e.path)
	}
	walker.lastWalk = time.Time{}
	if e, hit := walker.entry(cg.ID); e.path != cg.Rel || hit {
		t.Errorf("walk after a rate-limited miss: %q hit=%v, want %q", e.path, hit, cg.Rel)
	}

	// A removed cgroup resolves to nothing, not to a guess.
	gone := kerneltest.NewCgroup(t, "gone")
	if err := os.Remove(gone.Path); err != nil {
		t.Fatal(err)
	}
	if e, _ := e.cgroups.entry(gone.ID); e.path != "" {
		t.Errorf("removed cgroup: %q", e.path)
	}
}

func TestEnrich(t *testing.T) {
	e := newTestEnricher(t)
	cg := kerneltest.NewCgroup(t, "enrich")
	in := &collector.Event{
		Kind: collector.KindConnect, PID: uint32(os.Getpid()), UID: 0,
		ProcStart: startTicks(t, os.Getpid()) * (1e9 / userHZ), CgroupID: cg.ID,
	}
	var out Event
	e.Enrich(in, &out)
	exe, _ := os.Executable()
	if out.Process == nil || out.Process.Exe != exe || out.CgroupPath != cg.Rel || out.Identity != "exe:"+exe+" uid:0" {
		t.Fatalf("got %+v", out)
	}
	if !reflect.DeepEqual(out.Event, *in) {
		t.Error("kernel facts changed")
	}
	if n := testing.AllocsPerRun(100, func() { e.Enrich(in, &out) }); n != 0 {
		t.Errorf("%v allocations per enrichment on a cache hit, want 0", n)
	}
	st := e.Stats()
	if st.ProcessMisses != 1 || st.ProcessHits < 100 || st.CgroupMisses != 1 {
		t.Errorf("stats %+v", st)
	}

	// A loss event has no caller to enrich.
	loss := &collector.Event{Kind: collector.KindLoss, Lost: 3}
	e.Enrich(loss, &out)
	if out.Process != nil || out.Identity != "" || out.Lost != 3 {
		t.Errorf("loss event: %+v", out)
	}
}

func BenchmarkEnrichHit(b *testing.B) {
	root, err := collector.Cgroup2Mount()
	if err != nil {
		b.Skip(err)
	}
	e, err := New(Config{CgroupRoot: root, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		b.Skip(err)
	}
	defer e.Close()
	b2, _ := os.ReadFile("/proc/self/stat")
	_, start, _ := parseStat(b2)
	in := &collector.Event{Kind: collector.KindConnect, PID: uint32(os.Getpid()), ProcStart: start * (1e9 / userHZ), CgroupID: 1}
	var out Event
	e.Enrich(in, &out)
	b.ReportAllocs()
	for b.Loop() {
		e.Enrich(in, &out)
	}
}

// TestEnrichBatchRereadsAfterExecAndExit: a run of one process's events
// reads /proc once, and an execve or an exit in between makes the next
// event read it again, however the last lookup was remembered.
func TestEnrichBatchRereadsAfterExecAndExit(t *testing.T) {
	e := newTestEnricher(t)
	start := startTicks(t, os.Getpid()) * (1e9 / userHZ)
	connect := collector.Event{Kind: collector.KindConnect, PID: uint32(os.Getpid()), ProcStart: start}
	exec := collector.Event{Kind: collector.KindExec, PID: connect.PID, ProcStart: start, Exec: &collector.Exec{Path: "/usr/bin/next"}}
	exit := collector.Event{Kind: collector.KindExit, PID: connect.PID, ProcStart: start}
	steps := []struct {
		in           []collector.Event
		hits, misses uint64 // counts after the step
	}{
		{[]collector.Event{connect, connect, connect}, 2, 1},
		{[]collector.Event{exec, connect, connect}, 3, 2},
		{[]collector.Event{exit, connect}, 3, 3},
	}
	var out []Event
	for i, s := range steps {
		out = e.EnrichBatch(s.in, out, time.Now())
		for _, ev := range out {
			if ev.Process == nil || ev.Process.Exe == "" {
				t.Fatalf("step %d: event without its process: %+v", i, ev)
			}
		}
		if st := e.Stats(); st.ProcessHits != s.hits || st.ProcessMisses != s.misses {
			t.Errorf("step %d: %d hits, %d misses; want %d, %d", i, st.ProcessHits, st.ProcessMisses, s.hits, s.misses)
		}
	}
}

// TestEnrichBatchForgetsExited: a process exit drops the cached process and
// is not passed on.
func TestEnrichBatchForgetsExited(t *testing.T) {
	e := newTestEnricher(t)
	start := startTicks(t, os.Getpid()) * (1e9 / userHZ)
	connect := collector.Event{Kind: collector.KindConnect, PID: uint32(os.Getpid()), ProcStart: start}
	out := e.EnrichBatch([]collector.Event{connect}, nil, time.Now())
	if len(out) != 1 || out[0].Process == nil {
		t.Fatalf("got %+v", out)
	}
	if n := e.procs.entries.Len(); n != 1 {
		t.Fatalf("%d processes cached", n)
	}
	exit := collector.Event{Kind: collector.KindExit, PID: uint32(os.Getpid()), ProcStart: start}
	out = e.EnrichBatch([]collector.Event{exit}, out, time.Now())
	if len(out) != 0 {
		t.Errorf("exit passed on: %+v", out)
	}
	if n := e.procs.entries.Len(); n != 0 {
		t.Errorf("%d processes cached after the exit", n)
	}
}
