package learn

import (
	"bytes"
	"fmt"
	"runtime"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// BenchmarkLearn measures the ingest rate of event lines, the agent's
// own lines of generated calls (connects of every outcome, tls events,
// callees, names), on one goroutine: events/s, and MB/s of JSON; and
// events per second of the thread's own CPU time (events/cpu-s), which a
// busy machine does not skew.
func BenchmarkLearn(b *testing.B) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	lines := genEvents(11, 1<<16)
	data := append(bytes.Join(lines, []byte("\n")), '\n')
	b.SetBytes(int64(len(data)) / int64(len(lines)))
	b.ReportAllocs()
	l, err := New(Config{})
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	cpu0 := threadCPU()
	n := 0
	for n < b.N {
		if err := l.Read(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
		n += len(lines)
	}
	cpu := threadCPU() - cpu0
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(n)/cpu.Seconds(), "events/cpu-s")
	b.ReportMetric(0, "ns/op") // per line; events/s says it
}

// threadCPU is the CPU time of the calling thread.
func threadCPU() time.Duration {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		panic(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkLearnDecode measures the line decoder alone.
func BenchmarkLearnDecode(b *testing.B) {
	lines := genEvents(11, 4096)
	var ev Event
	var d decoder
	b.ReportAllocs()
	for i := 0; b.Loop(); i++ {
		d.decode(lines[i%len(lines)], &ev)
	}
}

// BenchmarkLearnPairs measures the memory of each distinct (caller,
// destination, port) kept: 1<<18 of them, heap in use after a GC, with
// the drafts not yet made.
func BenchmarkLearnPairs(b *testing.B) {
	const pairs = 1 << 18
	t0 := time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)
	var lines [][]byte
	for i := range pairs {
		// 64 callers, each to its own addresses, 4 ports each.
		exe := fmt.Sprintf("/bin/x%d", i%64)
		ip := fmt.Sprintf("10.%d.%d.%d", (i>>18)&255, (i>>10)&255, (i>>2)&255)
		lines = append(lines, call(t0.Add(time.Duration(i)*time.Millisecond), i+1, exe, ip, 1000+i%4, "", "refused"))
	}
	data := bytes.Join(lines, []byte("\n"))
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		l, err := New(Config{})
		if err != nil {
			b.Fatal(err)
		}
		if err := l.Read(bytes.NewReader(data)); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if st := l.Stats(); st.Pairs != pairs {
			b.Fatalf("%d pairs, want %d", st.Pairs, pairs)
		}
		b.ReportMetric(float64(after.HeapInuse-before.HeapInuse)/pairs, "bytes/pair")
		runtime.KeepAlive(l)
	}
}
