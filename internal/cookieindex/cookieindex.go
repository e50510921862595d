// Package cookieindex maps socket cookies to slot numbers: the join of a
// connect's start and outcome, and of a connection's caller and its
// ClientHello, look one up for every connect.
//
// It is an open-addressed table with linear probing, kept at most half
// full, whose entries are 16 bytes: a lookup reads one or two adjacent
// entries, where Go's map hashes the key and matches control bytes first.
// A delete shifts the entries after it back, so no tombstones build up on
// a table that sees every connect come and go.
//
// The hash follows how the kernel hands cookies out: each CPU takes
// blocks of 4,096 consecutive numbers from a shared counter. Fibonacci
// hashing spreads a run of consecutive keys evenly; each block is first
// moved by an offset of its own, as the runs of many CPUs, hashed alone,
// fall onto one another (with 64 CPUs, lookups probed five to twelve
// entries). TestSpreadsPerCPUBatches holds the probe lengths near those
// of a random hash, or below.
package cookieindex

import "math/bits"

// Index maps uint64 keys to int32 values. The zero Index is empty and
// ready to use. Not safe for concurrent use.
type Index struct {
	entries []entry // a power of two long, or nil
	shift   uint8   // 64 - log2(len(entries))
	n       int     // entries in use, the key 0 not counted
	// The key 0 marks an empty entry, so it is kept apart. The kernel
	// never gives a socket the cookie 0, but a record could carry it.
	zero    int32
	hasZero bool
}

type entry struct {
	key uint64 // 0: empty
	val int32
}

// minEntries is the size of the first table.
const minEntries = 16

func (x *Index) home(k uint64) int { return int(hash(k) >> x.shift) }

// hash's top bits are a key's home, in a table of any size.
func hash(k uint64) uint64 {
	// A block is 4096m+1 to 4096m+4096: the kernel counts before it hands
	// the number out.
	k += ((k - 1) >> 12) * 0xd6e8feb86659fd93
	return k * 0x9e3779b97f4a7c15
}

// Len is the number of keys held.
func (x *Index) Len() int {
	if x.hasZero {
		return x.n + 1
	}
	return x.n
}

// Get returns the value of k.
func (x *Index) Get(k uint64) (int32, bool) {
	if k == 0 {
		return x.zero, x.hasZero
	}
	if x.entries == nil {
		return 0, false
	}
	mask := len(x.entries) - 1
	for i := x.home(k); ; i = (i + 1) & mask {
		e := &x.entries[i]
		if e.key == k {
			return e.val, true
		}
		if e.key == 0 {
			return 0, false
		}
	}
}

// Upsert returns where the value of k is kept, and whether k was there
// already; a new key's value is 0 until set through the pointer, which is
// valid until the next Upsert or Delete.
func (x *Index) Upsert(k uint64) (v *int32, found bool) {
	if k == 0 {
		found = x.hasZero
		if !found {
			x.hasZero, x.zero = true, 0
		}
		return &x.zero, found
	}
	if x.entries == nil {
		x.grow()
	}
	mask := len(x.entries) - 1
	i := x.home(k)
	for ; x.entries[i].key != 0; i = (i + 1) & mask {
		if x.entries[i].key == k {
			return &x.entries[i].val, true
		}
	}
	if 2*(x.n+1) > len(x.entries) {
		x.grow()
		return x.Upsert(k)
	}
	x.entries[i] = entry{key: k}
	x.n++
	return &x.entries[i].val, false
}

// Put sets the value of k.
func (x *Index) Put(k uint64, v int32) {
	p, _ := x.Upsert(k)
	*p = v
}

// Delete removes k and returns the value it had.
func (x *Index) Delete(k uint64) (int32, bool) {
	if k == 0 {
		v, ok := x.zero, x.hasZero
		x.hasZero, x.zero = false, 0
		return v, ok
	}
	if x.entries == nil {
		return 0, false
	}
	mask := len(x.entries) - 1
	i := x.home(k)
	for ; x.entries[i].key != k; i = (i + 1) & mask {
		if x.entries[i].key == 0 {
			return 0, false
		}
	}
	v := x.entries[i].val
	// Close the hole: an entry further along the run moves back into it
	// unless its home lies cyclically after the hole, where a lookup
	// starting there would no longer pass the hole.
	for j := (i + 1) & mask; x.entries[j].key != 0; j = (j + 1) & mask {
		h := x.home(x.entries[j].key)
		if (j > i && (h <= i || h > j)) || (j < i && h <= i && h > j) {
			x.entries[i] = x.entries[j]
			i = j
		}
	}
	x.entries[i] = entry{}
	x.n--
	return v, true
}

// Range calls f for each key and its value, in no set order, until f
// returns false. f must not change the index.
func (x *Index) Range(f func(k uint64, v int32) bool) {
	if x.hasZero && !f(0, x.zero) {
		return
	}
	for _, e := range x.entries {
		if e.key != 0 && !f(e.key, e.val) {
			return
		}
	}
}

// grow doubles the table. It never shrinks: what it grew to is what the
// node needed at its busiest, and the collector bounds that.
func (x *Index) grow() {
	old := x.entries
	size := max(2*len(old), minEntries)
	x.entries = make([]entry, size)
	x.shift = uint8(64 - bits.TrailingZeros(uint(size)))
	mask := size - 1
	for _, e := range old {
		if e.key == 0 {
			continue
		}
		i := x.home(e.key)
		for x.entries[i].key != 0 {
			i = (i + 1) & mask
		}
		x.entries[i] = e
	}
}
