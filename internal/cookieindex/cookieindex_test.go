package cookieindex

import (
	"encoding/binary"
	"math/rand/v2"
	"testing"
)

// check compares x with the map it should equal, both ways.
func check(t testing.TB, x *Index, want map[uint64]int32) {
	t.Helper()
	if x.Len() != len(want) {
		t.Fatalf("Len %d, want %d", x.Len(), len(want))
	}
	for k, v := range want {
		if got, ok := x.Get(k); !ok || got != v {
			t.Fatalf("Get(%#x) = %d, %v; want %d", k, got, ok, v)
		}
	}
	n := 0
	x.Range(func(k uint64, v int32) bool {
		n++
		if w, ok := want[k]; !ok || w != v {
			t.Fatalf("Range gave %#x = %d, which is not held", k, v)
		}
		return true
	})
	if n != len(want) {
		t.Fatalf("Range gave %d keys, want %d", n, len(want))
	}
}

// op applies one operation to both x and the map.
func op(t testing.TB, x *Index, want map[uint64]int32, del bool, k uint64, v int32) {
	t.Helper()
	if del {
		got, ok := x.Delete(k)
		w, wok := want[k]
		if ok != wok || got != w {
			t.Fatalf("Delete(%#x) = %d, %v; want %d, %v", k, got, ok, w, wok)
		}
		delete(want, k)
		return
	}
	x.Put(k, v)
	want[k] = v
}

// TestAgainstMap runs random puts and deletes over keys drawn as the
// collector sees them (runs of consecutive cookies from a few per-CPU
// batches), over keys crowded onto few home slots, and over any uint64.
func TestAgainstMap(t *testing.T) {
	draws := map[string]func(r *rand.Rand) uint64{
		"runs":    func(r *rand.Rand) uint64 { return uint64(r.IntN(4))<<12 + uint64(r.IntN(300)) },
		"crowded": func(r *rand.Rand) uint64 { return uint64(r.IntN(40)) << 59 }, // a few homes, even in a big table
		"any":     func(r *rand.Rand) uint64 { return r.Uint64() >> r.IntN(64) },
	}
	for name, draw := range draws {
		t.Run(name, func(t *testing.T) {
			r := rand.New(rand.NewPCG(1, uint64(len(name))))
			var x Index
			want := map[uint64]int32{}
			for i := range 50000 {
				// Deletes win slightly less often, so the table grows
				// through several sizes and keeps long runs.
				op(t, &x, want, r.IntN(100) < 45, draw(r), int32(i))
				if i%997 == 0 {
					check(t, &x, want)
				}
			}
			check(t, &x, want)
			for k := range want {
				op(t, &x, want, true, k, 0)
			}
			check(t, &x, want)
		})
	}
}

// TestWrapAround: runs of entries that cross the end of the table still
// find their keys after any one of them is deleted.
func TestWrapAround(t *testing.T) {
	var probe Index
	probe.Put(1, 1) // allocates the first table
	size := len(probe.entries)
	// Keys by home slot, found by trying: two homes before the end of the
	// table and two after it.
	homes := []int{size - 2, size - 1, size - 1, 0, size - 1, 0, 1, size - 2}
	keys := make([]uint64, len(homes))
	used := map[uint64]bool{}
	for i, h := range homes {
		for k := uint64(2); ; k++ {
			if probe.home(k) == h && !used[k] {
				keys[i], used[k] = k, true
				break
			}
		}
	}
	for d := range keys {
		var x Index
		want := map[uint64]int32{}
		for i, k := range keys {
			op(t, &x, want, false, k, int32(i))
		}
		if len(x.entries) != size {
			t.Fatalf("the table grew to %d entries; the homes were found for %d", len(x.entries), size)
		}
		check(t, &x, want)
		op(t, &x, want, true, keys[d], 0)
		check(t, &x, want)
	}
}

func TestZeroKey(t *testing.T) {
	var x Index
	want := map[uint64]int32{}
	op(t, &x, want, false, 0, 7)
	op(t, &x, want, false, 5, 8)
	check(t, &x, want)
	if v, found := x.Upsert(0); !found || *v != 7 {
		t.Fatalf("Upsert(0) = %d, %v; want 7, true", *v, found)
	}
	op(t, &x, want, true, 0, 0)
	op(t, &x, want, true, 0, 0)
	check(t, &x, want)
}

func TestUpsert(t *testing.T) {
	var x Index
	v, found := x.Upsert(42)
	if found || *v != 0 {
		t.Fatalf("new key: %d, %v; want 0, false", *v, found)
	}
	*v = 3
	if v, found = x.Upsert(42); !found || *v != 3 {
		t.Fatalf("held key: %d, %v; want 3, true", *v, found)
	}
}

func TestNoAllocsOnceGrown(t *testing.T) {
	var x Index
	for k := range uint64(1000) {
		x.Put(k+1, 0)
	}
	for k := range uint64(1000) {
		x.Delete(k + 1)
	}
	k := uint64(5000)
	n := testing.AllocsPerRun(1000, func() {
		x.Put(k, 1)
		x.Get(k)
		x.Delete(k)
		k++
	})
	if n != 0 {
		t.Errorf("%v allocations per put, get and delete", n)
	}
}

// FuzzIndex runs an operation list against a map: each 9 bytes are a key
// (8) and an operation (1: its low bit deletes).
func FuzzIndex(f *testing.F) {
	f.Add([]byte{})
	f.Add(make([]byte, 9))
	f.Fuzz(func(t *testing.T, ops []byte) {
		var x Index
		want := map[uint64]int32{}
		for i := 0; i+9 <= len(ops); i += 9 {
			k := binary.LittleEndian.Uint64(ops[i:])
			op(t, &x, want, ops[i+8]&1 == 1, k, int32(i))
		}
		check(t, &x, want)
	})
}

// BenchmarkJoin puts, gets and deletes keys as the collector does for each
// connect, with some waiting, against Go's map.
func BenchmarkJoin(b *testing.B) {
	const waiting = 64
	b.Run("index", func(b *testing.B) {
		var x Index
		for k := range uint64(waiting) {
			x.Put(k+1, 0)
		}
		k := uint64(1)
		for b.Loop() {
			x.Put(k+waiting, 1)
			x.Delete(k)
			k++
		}
	})
	b.Run("map", func(b *testing.B) {
		x := map[uint64]int32{}
		for k := range uint64(waiting) {
			x[k+1] = 0
		}
		k := uint64(1)
		for b.Loop() {
			x[k+waiting] = 1
			delete(x, k)
			k++
		}
	})
}
