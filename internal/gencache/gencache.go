// Package gencache is a bounded map that keeps what is still used: two
// generations of at most size/2 entries each. When the young one is full it
// becomes the old one and the old one is dropped; an old entry that is
// looked up again moves back to the young one. Reads and writes of present
// keys do not allocate. Not safe for concurrent use.
package gencache

// Cache maps K to V, holding at most size entries.
type Cache[K comparable, V any] struct {
	half       int
	young, old map[K]V
}

// New returns a cache of at most size entries (at least 2).
func New[K comparable, V any](size int) *Cache[K, V] {
	half := max(size/2, 1)
	return &Cache[K, V]{half: half, young: make(map[K]V, half), old: map[K]V{}}
}

// Get returns the value of k, keeping it for another generation.
func (c *Cache[K, V]) Get(k K) (V, bool) {
	if v, ok := c.young[k]; ok {
		return v, true
	}
	v, ok := c.old[k]
	if ok {
		c.Put(k, v)
	}
	return v, ok
}

// Put sets the value of k.
func (c *Cache[K, V]) Put(k K, v V) {
	if _, ok := c.young[k]; !ok && len(c.young) >= c.half {
		// The dropped generation's map, emptied, becomes the young one:
		// a cache that turns over often (one entry per connect, say)
		// allocates nothing once both maps have grown.
		clear(c.old)
		c.old, c.young = c.young, c.old
	}
	c.young[k] = v
}

// Delete forgets k.
func (c *Cache[K, V]) Delete(k K) {
	delete(c.young, k)
	delete(c.old, k)
}

// Len is the number of entries held, at most size.
func (c *Cache[K, V]) Len() int { return len(c.young) + len(c.old) }
