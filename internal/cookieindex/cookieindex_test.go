package cookieindex

import (
	"encoding/binary"
	"fmt"
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

// crowded are keys whose homes lie in the first sixteenth of a table of
// any size: they make long runs.
var crowded = func() []uint64 {
	var keys []uint64
	for k := uint64(1); len(keys) < 3000; k++ {
		if hash(k)>>60 == 0 {
			keys = append(keys, k)
		}
	}
	return keys
}()

// TestAgainstMap runs random puts and deletes over keys drawn as the
// collector sees them (runs of consecutive cookies from a few per-CPU
// batches), over keys crowded onto few home slots, and over any uint64.
func TestAgainstMap(t *testing.T) {
	draws := map[string]func(r *rand.Rand) uint64{
		"runs":    func(r *rand.Rand) uint64 { return uint64(r.IntN(4))<<12 + uint64(r.IntN(300)) },
		"crowded": func(r *rand.Rand) uint64 { return crowded[r.IntN(len(crowded))] }, // homes in a sixteenth of any table
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

// TestDeleteBeforeWrappedHome: deleting the entry in the last slot leaves
// the entry after it, at its own home in slot 0, where it is.
func TestDeleteBeforeWrappedHome(t *testing.T) {
	var x Index
	x.Put(1, 0) // allocates the first table
	x.Delete(1)
	size := len(x.entries)
	var a, b uint64
	for k := uint64(2); a == 0 || b == 0; k++ {
		switch x.home(k) {
		case size - 1:
			a = k
		case 0:
			b = k
		}
	}
	want := map[uint64]int32{}
	op(t, &x, want, false, a, 1)
	op(t, &x, want, false, b, 2)
	op(t, &x, want, true, a, 0)
	check(t, &x, want)
}

// TestHalfFull: the table never holds more keys than half its entries,
// and writing a held key again does not grow it.
func TestHalfFull(t *testing.T) {
	var x Index
	for k := uint64(1); k <= 100000; k++ {
		x.Put(k, 1)
		if 2*x.n > len(x.entries) {
			t.Fatalf("%d keys in %d entries", x.n, len(x.entries))
		}
		if x.n == len(x.entries)/2 {
			size := len(x.entries)
			x.Put(k, 2)
			x.Put(1, 2)
			if len(x.entries) != size {
				t.Fatalf("writing held keys grew a table of %d keys from %d entries to %d", x.n, size, len(x.entries))
			}
		}
	}
}

// perCPUCookies returns n cookies as the kernel hands them out: each CPU
// takes blocks of 4,096 from a shared counter, and each connect comes
// from a random one of ncpu CPUs.
func perCPUCookies(ncpu, n int) []uint64 {
	r := rand.New(rand.NewPCG(7, uint64(ncpu)))
	last := make([]uint64, ncpu)
	var shared uint64
	keys := make([]uint64, n)
	for i := range keys {
		c := r.IntN(ncpu)
		if last[c]%4096 == 0 {
			last[c] = shared
			shared += 4096
		}
		last[c]++
		keys[i] = last[c]
	}
	return keys
}

// TestSpreadsPerCPUBatches: with cookies from 1 to 256 CPUs passing
// through a table at its fullest (half full), lookups probe about as
// many entries as under a random hash (1.5 for a held key, 2.5 for a
// missing one, on average) or fewer. Fibonacci hashing alone probed up to
// 5.0 and 12.0 with 64 CPUs.
func TestSpreadsPerCPUBatches(t *testing.T) {
	for _, ncpu := range []int{1, 4, 16, 64, 256} {
		for _, waiting := range []int{8191, 32767} {
			keys := perCPUCookies(ncpu, waiting+100000)
			var x Index
			for _, k := range keys[:waiting] {
				x.Put(k, 1)
			}
			for i, k := range keys[waiting:] {
				x.Put(k, 1)
				x.Delete(keys[i])
			}
			// The window peaks at waiting+1 keys, between a put and a delete.
			if x.Len() != waiting || len(x.entries) != 2*(waiting+1) {
				t.Fatalf("%d keys in %d entries: not at the fullest", x.Len(), len(x.entries))
			}
			mask := len(x.entries) - 1
			held, missing := 0, 0
			for i, e := range x.entries {
				if e.key != 0 {
					held += (i-x.home(e.key))&mask + 1
				}
				for j := i; ; j = (j + 1) & mask {
					missing++
					if x.entries[j].key == 0 {
						break
					}
				}
			}
			h, m := float64(held)/float64(x.n), float64(missing)/float64(len(x.entries))
			if h > 1.75 || m > 2.75 {
				t.Errorf("%d CPUs, %d keys: %.2f entries probed for a held key, %.2f for a missing one", ncpu, waiting, h, m)
			}
		}
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

// BenchmarkJoin puts and deletes keys as the collector does for each
// connect, with some waiting, against Go's map: cookies from one CPU,
// and from 64.
func BenchmarkJoin(b *testing.B) {
	for _, ncpu := range []int{1, 64} {
		for _, waiting := range []int{64, 8192} {
			keys := perCPUCookies(ncpu, 1<<20)
			name := fmt.Sprintf("cpus=%d/waiting=%d", ncpu, waiting)
			b.Run(name+"/index", func(b *testing.B) {
				var x Index
				for _, k := range keys[:waiting] {
					x.Put(k, 1)
				}
				i := 0
				for b.Loop() {
					if i+waiting == len(keys) {
						for _, k := range keys[i:] {
							x.Delete(k)
						}
						for _, k := range keys[:waiting] {
							x.Put(k, 1)
						}
						i = 0
					}
					x.Put(keys[i+waiting], 1)
					x.Delete(keys[i])
					i++
				}
			})
			b.Run(name+"/map", func(b *testing.B) {
				x := map[uint64]int32{}
				for _, k := range keys[:waiting] {
					x[k] = 1
				}
				i := 0
				for b.Loop() {
					if i+waiting == len(keys) {
						clear(x)
						for _, k := range keys[:waiting] {
							x[k] = 1
						}
						i = 0
					}
					x[keys[i+waiting]] = 1
					delete(x, keys[i])
					i++
				}
			})
		}
	}
}
