package child

import (
	"sync"

	"github.com/tetratelabs/wazero/experimental"
)

// memoryPool gives guest linear memories back to the next instance instead
// of to the garbage collector: every request gets a fresh instance, and
// allocating (then collecting) its memory anew each time was a large part of
// a small request's cost. A buffer is cleared before it is reused, so a
// guest still starts with all-zero memory, as a fresh instance must, and
// never sees what the previous request left.
//
// It is cleared when it is taken, not when it is released: the release is
// inside the guest's proc_exit, on the request's path, while the next
// instance is usually made after the response has gone out (see spare.go),
// and a buffer the pool has no room for is never cleared at all. Clearing
// is the cheapest reset measured for the Go hello: madvise(MADV_DONTNEED)
// instead costs a page fault for every page the next request touches (see
// manager/RATIONALE.md, "Where a Go request's time goes, and the spare
// instance").
type memoryPool struct {
	mu   sync.Mutex
	free []pooledBuffer
}

// pooledBuffer is a released buffer: zero past dirty, not yet cleared below.
type pooledBuffer struct {
	buf   []byte // length 0
	dirty int
}

// Buffers kept for reuse: enough for the one instance a child runs at a
// time plus a spare, and none too large to keep around.
const (
	maxPooledBuffers = 2
	maxPooledBytes   = 64 << 20
)

// Allocate implements experimental.MemoryAllocator.
func (mp *memoryPool) Allocate(capacity, max uint64) experimental.LinearMemory {
	return &pooledMemory{pool: mp, capacity: capacity, max: max}
}

func (mp *memoryPool) get(size, capacity uint64) []byte {
	mp.mu.Lock()
	for i, pb := range mp.free {
		if uint64(cap(pb.buf)) >= size {
			mp.free = append(mp.free[:i], mp.free[i+1:]...)
			mp.mu.Unlock()
			clear(pb.buf[:pb.dirty])
			return pb.buf[:size]
		}
	}
	mp.mu.Unlock()
	return make([]byte, size, max(size, capacity))
}

// put keeps b, whose bytes from dirty on are zero, for reuse.
func (mp *memoryPool) put(b []byte, dirty int) {
	if cap(b) > maxPooledBytes {
		return
	}
	mp.mu.Lock()
	defer mp.mu.Unlock()
	if len(mp.free) < maxPooledBuffers {
		mp.free = append(mp.free, pooledBuffer{buf: b[:0], dirty: dirty})
	}
}

// pooledMemory is one instance's linear memory.
type pooledMemory struct {
	pool          *memoryPool
	capacity, max uint64
	buf           []byte
	high          int // the longest the buffer has been: what reuse clears
}

// Reallocate implements experimental.LinearMemory: the memory grows to size
// bytes, keeping its contents; the new bytes are zero.
func (m *pooledMemory) Reallocate(size uint64) []byte {
	if size > m.max {
		return nil
	}
	switch {
	case m.buf == nil:
		m.buf = m.pool.get(size, m.capacity)
	case size <= uint64(cap(m.buf)):
		// Bytes past the old length are zero: a pooled buffer is cleared
		// up to its high-water mark when taken, a fresh one made zero.
		m.buf = m.buf[:size]
	default:
		// Doubling amortises growth, but never past the maximum: a
		// guest at its limit must not cost twice the limit.
		nb := make([]byte, size, min(max(size, 2*uint64(cap(m.buf))), max(m.max, size)))
		copy(nb, m.buf)
		m.buf = nb
		m.high = len(m.buf) // the old buffer is dropped, not pooled
	}
	m.high = max(m.high, len(m.buf))
	return m.buf
}

// Free implements experimental.LinearMemory.
func (m *pooledMemory) Free() {
	if m.buf == nil {
		return
	}
	m.pool.put(m.buf, m.high)
	m.buf = nil
}
