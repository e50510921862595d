package scope

import (
	"fmt"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// maxHeapRatio is the most a reload may add to the agent's memory, as a
// multiple of the largest file accepted. The collector lets the heap grow
// to twice what is live (GOGC=100) before it collects, so what a parse
// holds live at its peak may be half of that.
const maxHeapRatio = 20

// heapObjects is what the heap holds: live objects and those not swept yet,
// which is what the process needs memory for at that moment.
const heapObjects = "/memory/classes/heap/objects:bytes"

// heapPeak runs f and returns by how much what it holds live grew the heap
// at most, sampling it from another goroutine while f runs; and how many
// samples that took. The collector runs all the time meanwhile (GOGC=1),
// so that garbage, whose share depends on when it last ran, hardly counts.
func heapPeak(f func()) (growth uint64, samples int) {
	defer debug.SetGCPercent(debug.SetGCPercent(1))
	runtime.GC()
	s := []metrics.Sample{{Name: heapObjects}}
	metrics.Read(s)
	base := s[0].Value.Uint64()
	var stop atomic.Bool
	var peak uint64
	done := make(chan struct{})
	go func() {
		defer close(done)
		s := []metrics.Sample{{Name: heapObjects}}
		for {
			metrics.Read(s)
			peak = max(peak, s[0].Value.Uint64())
			samples++
			if stop.Load() {
				return
			}
			time.Sleep(20 * time.Microsecond)
		}
	}()
	f()
	stop.Store(true)
	<-done
	if peak < base {
		return 0, samples
	}
	return peak - base, samples
}

// heapNow is the heap's live objects after a collection.
func heapNow() uint64 {
	runtime.GC()
	s := []metrics.Sample{{Name: heapObjects}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// fillFile repeats unit between head and tail up to maxFileSize bytes.
func fillFile(head, unit, tail string) []byte {
	n := (maxFileSize - len(head) - len(tail)) / len(unit)
	return []byte(head + strings.Repeat(unit, n) + tail)
}

// denseDoc is a document of about n nodes at a byte a node: the most tree
// per byte yaml.v3 builds. It is a list, so that Parse reports it in one
// problem and goes on to the next document.
func denseDoc(anchor string, n int) string {
	return "--- [" + anchor + "{" + strings.Repeat("a,", n/2) + "a}]\n"
}

// anchoredDocs are documents whose anchors the decoder keeps, as many as
// maxDocNodes allows, and then documents that fill the file.
func anchoredDocs() []byte {
	var b strings.Builder
	for i := range 7 {
		b.WriteString(denseDoc(fmt.Sprintf("&a%d ", i), maxDocNodes/8-10))
	}
	return fillFile(b.String(), denseDoc("", maxDocNodes/8-10), "")
}

// multipliedRules is a rule of many peers, multiplied by aliases up to the
// file's budget: the most Parse keeps per byte.
func multipliedRules() []byte {
	return []byte(docHead + "many\nspec:\n  subject: {namespace: x}\n  egress: [&rule {to: [" +
		strings.Repeat("{cidr: 10.0.0.0/8},", 999) + "{cidr: 10.0.0.0/8}]}, " +
		strings.Repeat("*rule,", maxAliasNodes/3003-1) + "*rule]\n")
}

// mixedWorst holds at once the most of everything: a document as large as
// allowed whose anchor the decoder keeps, rules that name it up to the
// alias budget, and a file filled with CallScopes.
func mixedWorst() []byte {
	var b strings.Builder
	const peers = maxDocNodes/6 - 40
	b.WriteString(docHead + "base\nspec:\n  subject: {namespace: x}\n  egress: [&rule {to: [")
	for i := range peers {
		fmt.Fprintf(&b, "{cidr: 10.%d.%d.0/24},", i>>8&255, i&255)
	}
	b.WriteString("]}]\n")
	for i := range maxAliasNodes / (3*peers + 2) {
		fmt.Fprintf(&b, "---\n%salias-%d\nspec: {subject: {namespace: x}, egress: [*rule]}\n", docHead, i)
	}
	head := b.String()
	return []byte(head + benchPoliciesYAML(0, (maxFileSize-len(head))/460))
}

// multipliedLabels is a large podLabels mapping that later documents name.
func multipliedLabels() []byte {
	var b strings.Builder
	b.WriteString(docHead + "labels\nspec:\n  subject:\n    podLabels: &labels {")
	for i := range 3000 {
		fmt.Fprintf(&b, "k%d: v, ", i)
	}
	b.WriteString("k: v}\n")
	for i := range maxAliasNodes / 6003 {
		fmt.Fprintf(&b, "---\n%sl%d\nspec: {subject: {podLabels: *labels}}\n", docHead, i)
	}
	return []byte(b.String())
}

// hostileFiles are the inputs that cost the most memory per byte, each at
// the largest size accepted, made one at a time so that the test's own
// heap stays small.
var hostileFiles = []struct {
	name string
	make func() []byte
}{
	{"one document as dense as can be", func() []byte { return fillFile("[", "1,", "1]") }},
	{"flow mappings of keys alone", func() []byte { return fillFile("", denseDoc("", maxDocNodes-10), "") }},
	{"flow sequences", func() []byte { return fillFile("", "--- ["+strings.Repeat("1,", maxDocNodes/2-10)+"1]\n", "") }},
	{"block sequences of nulls", func() []byte { return fillFile("", "---\n"+strings.Repeat("-\n", maxDocNodes/2-10), "") }},
	{"documents that define anchors", anchoredDocs},
	{"dense documents that all define anchors", func() []byte {
		var b strings.Builder
		for i := 0; b.Len() < maxFileSize-maxDocNodes; i++ {
			b.WriteString(denseDoc(fmt.Sprintf("&a%d ", i), maxDocNodes-10))
		}
		return []byte(b.String())
	}},
	{"many empty documents", func() []byte { return fillFile("", "---\n", "") }},
	{"one huge scalar", func() []byte { return fillFile("a: \"", "x", "\"\n") }},
	{"one huge comment", func() []byte { return fillFile("a: b\n#", "x", "\n") }},
	{"deep nesting", func() []byte {
		return fillFile(strings.Repeat("[", 9000)+strings.Repeat("]", 9000)+"\n---\n", "x", "\n")
	}},
	{"rules multiplied by aliases", multipliedRules},
	{"labels multiplied by aliases", multipliedLabels},
	{"the most of everything at once", mixedWorst},
	{"a full file of CallScopes", func() []byte { return []byte(benchPoliciesYAML(0, maxFileSize/460)) }},
}

// TestParseMemoryIsBounded checks that no file Parse accepts to read makes
// the heap grow by more than maxHeapRatio times the largest file accepted,
// once the collector's headroom is counted.
func TestParseMemoryIsBounded(t *testing.T) {
	if testing.Short() {
		t.Skip("parses megabytes")
	}
	const bound = maxHeapRatio * maxFileSize / 2
	for _, tc := range hostileFiles {
		t.Run(tc.name, func(t *testing.T) {
			data := tc.make()
			if len(data) > maxFileSize {
				t.Fatalf("input of %d bytes is over maxFileSize", len(data))
			}
			var err error
			var n int
			start := time.Now()
			growth, samples := heapPeak(func() {
				var policies []Policy
				policies, err = Parse("p.yaml", data)
				n = len(policies)
			})
			took := time.Since(start)
			msg := "ok"
			if err != nil {
				msg = strings.SplitN(err.Error(), "\n", 2)[0]
			}
			t.Logf("%d bytes, %d policies, %v: %.1f MiB live at most (%.1f times the largest file), %d samples: %.100s",
				len(data), n, took.Round(time.Millisecond), float64(growth)/(1<<20), float64(growth)/maxFileSize, samples, msg)
			if growth > bound {
				t.Errorf("%d bytes live at most, more than %d times %d bytes, halved", growth, maxHeapRatio, maxFileSize)
			}
		})
	}
}

// TestParseMemoryIsReturned checks that Parse keeps nothing of a file once
// its result is dropped: the heap comes back to where it was.
func TestParseMemoryIsReturned(t *testing.T) {
	if testing.Short() {
		t.Skip("parses megabytes")
	}
	for _, tc := range hostileFiles {
		data := tc.make()
		before := heapNow()
		policies, _ := Parse("p.yaml", data)
		runtime.KeepAlive(policies)
		after := heapNow()
		if after > before+256<<10 {
			t.Errorf("%s: heap at %d bytes after Parse, %d before", tc.name, after, before)
		}
	}
}
