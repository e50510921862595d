package gencache

import (
	"runtime"
	"testing"
)

func TestBounded(t *testing.T) {
	c := New[int, int](10)
	for i := range 1000 {
		c.Put(i, i)
		if c.Len() > 10 {
			t.Fatalf("%d entries after %d puts, max 10", c.Len(), i+1)
		}
	}
	if _, ok := c.Get(999); !ok {
		t.Error("the newest entry is gone")
	}
	if _, ok := c.Get(0); ok {
		t.Error("the oldest entry is still there")
	}
}

// TestKeepsWhatIsUsed: an entry looked up every generation survives any
// number of others passing through.
func TestKeepsWhatIsUsed(t *testing.T) {
	c := New[int, string](4)
	c.Put(-1, "kept")
	for i := range 100 {
		c.Put(i, "")
		if v, ok := c.Get(-1); !ok || v != "kept" {
			t.Fatalf("used entry lost after %d others", i+1)
		}
	}
}

func TestPutExistingDoesNotRotate(t *testing.T) {
	c := New[int, int](4)
	c.Put(1, 1)
	c.Put(2, 2)
	c.Put(2, 3) // young is full, but 2 is in it: no new generation
	if v, ok := c.Get(1); !ok || v != 1 {
		t.Error("rewriting a present key dropped a generation")
	}
}

func TestDelete(t *testing.T) {
	c := New[string, int](4)
	c.Put("a", 1)
	c.Put("b", 2)
	c.Put("c", 3) // a and b now old
	c.Delete("a")
	c.Delete("c")
	if _, ok := c.Get("a"); ok {
		t.Error("deleted old entry found")
	}
	if _, ok := c.Get("c"); ok {
		t.Error("deleted young entry found")
	}
	if c.Len() != 1 {
		t.Errorf("len %d, want 1", c.Len())
	}
}

func TestGetAllocs(t *testing.T) {
	c := New[[2]string, int](8)
	k := [2]string{"a", "b"}
	c.Put(k, 1)
	if n := testing.AllocsPerRun(100, func() { c.Get(k) }); n != 0 {
		t.Errorf("%v allocations per hit", n)
	}
}

// TestTurnoverAllocatesNothing: a cache whose entries are all new, one per
// connect say, reuses its two maps from generation to generation.
func TestTurnoverAllocatesNothing(t *testing.T) {
	c := New[uint64, int](64)
	k := uint64(0)
	for range 256 { // both maps grown
		k++
		c.Put(k, 1)
	}
	// Counted over all the Puts: testing.AllocsPerRun rounds an
	// allocation every 32 Puts down to 0.
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	for range 1000 {
		k++
		c.Put(k, 1)
	}
	runtime.ReadMemStats(&after)
	if n := after.Mallocs - before.Mallocs; n != 0 {
		t.Errorf("%d allocations in 1,000 Puts, want 0", n)
	}
	if n := c.Len(); n > 64 {
		t.Errorf("%d entries held, want at most 64", n)
	}
}
