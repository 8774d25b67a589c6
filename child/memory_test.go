package child

import "testing"

func TestReusedGuestMemoryIsAllZero(t *testing.T) {
	pool := &memoryPool{}
	first := pool.Allocate(4<<16, 64<<16)
	b := first.Reallocate(2 << 16)
	for i := range b {
		b[i] = 0xAA
	}
	b = first.Reallocate(3 << 16) // grows within capacity
	for i := range b {
		b[i] = 0xBB
	}
	first.Free()

	second := pool.Allocate(4<<16, 64<<16)
	for _, size := range []uint64{1 << 16, 3 << 16, 4 << 16, 9 << 16} {
		b := second.Reallocate(size)
		if uint64(len(b)) != size {
			t.Fatalf("length %d, want %d", len(b), size)
		}
		for i, v := range b {
			if v != 0 {
				t.Fatalf("byte %d of a reused memory grown to %d is %#x, want 0", i, size, v)
			}
		}
	}
	if second.Reallocate(65<<16) != nil {
		t.Fatal("grew past max")
	}
	second.Free()
}

func TestGrowingKeepsTheContents(t *testing.T) {
	m := (&memoryPool{}).Allocate(1<<16, 16<<16)
	b := m.Reallocate(1 << 16)
	b[0], b[len(b)-1] = 1, 2
	b = m.Reallocate(8 << 16) // past capacity: a new buffer
	if b[0] != 1 || b[1<<16-1] != 2 || b[1<<16] != 0 {
		t.Fatalf("contents lost or new bytes not zero: %d %d %d", b[0], b[1<<16-1], b[1<<16])
	}
	m.Free()
}
