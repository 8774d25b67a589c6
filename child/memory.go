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
type memoryPool struct {
	mu   sync.Mutex
	free [][]byte // cleared buffers, length 0
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
	for i, b := range mp.free {
		if uint64(cap(b)) >= size {
			mp.free = append(mp.free[:i], mp.free[i+1:]...)
			mp.mu.Unlock()
			return b[:size]
		}
	}
	mp.mu.Unlock()
	return make([]byte, size, max(size, capacity))
}

func (mp *memoryPool) put(b []byte) {
	if cap(b) > maxPooledBytes {
		return
	}
	mp.mu.Lock()
	defer mp.mu.Unlock()
	if len(mp.free) < maxPooledBuffers {
		mp.free = append(mp.free, b[:0])
	}
}

// pooledMemory is one instance's linear memory.
type pooledMemory struct {
	pool          *memoryPool
	capacity, max uint64
	buf           []byte
	high          int // the longest the buffer has been: what Free clears
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
		// Bytes past the old length are zero: pooled buffers are cleared
		// up to their high-water mark, fresh ones were made zero.
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
	clear(m.buf[:m.high])
	m.pool.put(m.buf)
	m.buf = nil
}
