package manager

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
	"testing/iotest"
)

// readAllBody returns the bytes of a body, wherever it is held.
func readAllBody(t *testing.T, b *reqBody) []byte {
	t.Helper()
	if r := b.Reader(); r != nil {
		rest, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		return append(append([]byte(nil), b.mem...), rest...)
	}
	return b.mem
}

func TestBodiesAreHeldInMemoryOrSpooledWithinTheirBudgets(t *testing.T) {
	tests := []struct {
		name      string
		size      int
		hint      int64 // CONTENT_LENGTH, -1 for none
		memLimit  int64
		wantSpool bool
	}{
		{"an empty body", 0, -1, 1 << 20, false},
		{"a small body with its length", 1000, 1000, 1 << 20, false},
		{"a small body streamed without a length", 1000, -1, 1 << 20, false},
		{"a body at the threshold", spoolThreshold - 1, -1, 1 << 20, false},
		{"a body over the threshold", spoolThreshold + 1, -1, 1 << 20, true},
		{"a large body with its length", 3 << 20, 3 << 20, 1 << 20, true},
		{"a small body once memory is used up", 1000, 1000, 0, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "spool")
			s := newBodyStore(dir, tt.memLimit, 8<<20)
			want := bytes.Repeat([]byte("0123456789abcdef"), tt.size/16+1)[:tt.size]
			// One byte per Read: the worst case for the growth logic.
			b, err := s.read(iotest.OneByteReader(bytes.NewReader(want)), 16<<20, tt.hint)
			if err != nil {
				t.Fatal(err)
			}
			if got := readAllBody(t, b); !bytes.Equal(got, want) || b.Len() != int64(tt.size) {
				t.Fatalf("got %d bytes (Len %d), want %d", len(got), b.Len(), tt.size)
			}
			if spooled := b.f != nil; spooled != tt.wantSpool {
				t.Fatalf("spooled = %v, want %v", spooled, tt.wantSpool)
			}
			if s.mem.Load() > tt.memLimit || s.mem.Load() > spoolThreshold {
				t.Fatalf("memory held %d, budget %d", s.mem.Load(), tt.memLimit)
			}
			if ents, _ := os.ReadDir(dir); len(ents) != 0 {
				t.Fatalf("spool files have names: %v", ents)
			}
			b.Release()
			b.Release()
			if s.mem.Load() != 0 || s.disk.Load() != 0 {
				t.Fatalf("after Release: %d bytes of memory and %d of disk still held", s.mem.Load(), s.disk.Load())
			}
		})
	}
}

func TestBodiesPastTheirBoundsAreRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "spool")
	s := newBodyStore(dir, 64<<10, 1<<20)

	if _, err := s.read(bytes.NewReader(make([]byte, 10)), 100, 1000); !errors.Is(err, errBodyTooLarge) {
		t.Errorf("announced over max_body: %v, want errBodyTooLarge", err)
	}
	if _, err := s.read(bytes.NewReader(make([]byte, 101)), 100, -1); !errors.Is(err, errBodyTooLarge) {
		t.Errorf("streamed over max_body: %v, want errBodyTooLarge", err)
	}
	if b, err := s.read(bytes.NewReader(make([]byte, 300<<10)), 16<<20, -1); err != nil {
		t.Errorf("a large body within max_body: %v", err)
	} else {
		b.Release()
	}
	if _, err := s.read(bytes.NewReader(make([]byte, 10)), 16<<20, 2<<20); !errors.Is(err, errSpoolFull) {
		t.Errorf("announced over spool_size: %v, want errSpoolFull", err)
	}
	held, err := s.read(bytes.NewReader(make([]byte, 700<<10)), 16<<20, -1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.read(bytes.NewReader(make([]byte, 700<<10)), 16<<20, -1); !errors.Is(err, errSpoolFull) {
		t.Errorf("a second body the spool cannot hold: %v, want errSpoolFull", err)
	}
	held.Release()
	if s.mem.Load() != 0 || s.disk.Load() != 0 {
		t.Fatalf("after the refusals: %d bytes of memory and %d of disk still held", s.mem.Load(), s.disk.Load())
	}
	b, err := s.read(bytes.NewReader(make([]byte, 700<<10)), 16<<20, -1)
	if err != nil {
		t.Fatalf("once the spool has room again: %v", err)
	}
	b.Release()
}
