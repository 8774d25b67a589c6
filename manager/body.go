package manager

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// spoolThreshold is the largest request body kept in memory; a larger one
// goes to a spool file as it arrives.
const spoolThreshold = 64 << 10

// errBodyTooLarge: the body is over max_body (413).
var errBodyTooLarge = errors.New("request body too large")

// errSpoolFull: taking the body would pass spool_size (503).
var errSpoolFull = errors.New("request body spool is full")

// spoolError is a failure of the spool itself (a disk error), as opposed
// to the front end going away while it sends the body.
type spoolError struct{ err error }

func (e *spoolError) Error() string { return "spooling the request body: " + e.err.Error() }
func (e *spoolError) Unwrap() error { return e.err }

// bodyStore holds request bodies between their arrival and their hand-over
// to a child, within fixed bounds whatever clients send: at most memLimit
// bytes in memory for all requests together, and at most diskLimit bytes
// in unlinked files under dir. See RATIONALE.md, "Why the manager reads
// the whole body before taking a child".
type bodyStore struct {
	dir                 string
	memLimit, diskLimit int64
	mem, disk           atomic.Int64 // bytes held now

	dirOnce sync.Once
	dirErr  error
}

func newBodyStore(dir string, memLimit, diskLimit int64) *bodyStore {
	return &bodyStore{dir: dir, memLimit: memLimit, diskLimit: diskLimit}
}

// copyBufs are the buffers bodies are copied through on their way to and
// from a spool file.
var copyBufs = sync.Pool{New: func() any { b := make([]byte, 64<<10); return &b }}

// reqBody is one request's body: in memory (mem) or in an unlinked spool
// file (f). Release gives back what it holds.
type reqBody struct {
	store    *bodyStore
	mem      []byte
	f        *os.File
	size     int64
	memHeld  int64
	diskHeld int64
}

// Len is the body's size in bytes.
func (b *reqBody) Len() int64 {
	if b == nil {
		return 0
	}
	return b.size
}

// Reader returns a reader of the whole body, for a spooled body only.
func (b *reqBody) Reader() io.Reader {
	if b == nil || b.f == nil {
		return nil
	}
	return io.NewSectionReader(b.f, 0, b.size)
}

// Release closes the spool file (the kernel frees its blocks) and gives
// back the memory and disk it held. Safe on nil and twice.
func (b *reqBody) Release() {
	if b == nil || b.store == nil {
		return
	}
	if b.f != nil {
		b.f.Close()
		b.f = nil
	}
	b.mem = nil
	b.store.mem.Add(-b.memHeld)
	b.store.disk.Add(-b.diskHeld)
	b.memHeld, b.diskHeld = 0, 0
	b.store = nil
}

// reserve takes n bytes from a budget; it fails if that would pass limit.
func reserve(held *atomic.Int64, n, limit int64) bool {
	if held.Add(n) > limit {
		held.Add(-n)
		return false
	}
	return true
}

// read reads the whole body from r, up to limit bytes (errBodyTooLarge
// past it). hint is the announced CONTENT_LENGTH, or -1: a body announced
// over limit is refused before it is read, and one announced over
// spoolThreshold goes straight to a spool file, its size reserved at once.
// Past the spool's bound the error is errSpoolFull; a failing spool is a
// *spoolError; any other error is the front end's (it went away). The
// caller releases the body.
func (s *bodyStore) read(r io.Reader, limit, hint int64) (*reqBody, error) {
	if hint > limit {
		return nil, errBodyTooLarge
	}
	b := &reqBody{store: s}
	if r == nil {
		return b, nil
	}
	if hint <= spoolThreshold {
		spill, err := b.readMem(r, limit, hint)
		if err != nil || !spill {
			if err != nil {
				b.Release()
			}
			return b, err
		}
	}
	if err := b.spool(r, limit, hint); err != nil {
		b.Release()
		return nil, err
	}
	return b, nil
}

// readMem reads a body of up to spoolThreshold bytes into memory, within
// the memory budget. It reports spill when the body is larger or the
// budget is used up; what it read so far is then in b.mem, for spool.
func (b *reqBody) readMem(r io.Reader, limit, hint int64) (spill bool, err error) {
	s := b.store
	var buf []byte
	for {
		if len(buf) == cap(buf) {
			if len(buf) >= spoolThreshold {
				b.mem = buf
				return true, nil
			}
			// Exactly the announced length (and a byte to see EOF),
			// else doubling from 4 KiB.
			grow := int64(max(cap(buf), 4<<10))
			if hint >= 0 && cap(buf) == 0 {
				grow = hint + 1
			}
			grow = min(grow, spoolThreshold-int64(cap(buf)))
			if !reserve(&s.mem, grow, s.memLimit) {
				b.mem = buf
				return true, nil
			}
			b.memHeld += grow
			nb := make([]byte, len(buf), int64(cap(buf))+grow)
			copy(nb, buf)
			buf = nb
		}
		n, err := r.Read(buf[len(buf):cap(buf)])
		buf = buf[:len(buf)+n]
		if int64(len(buf)) > limit {
			return false, errBodyTooLarge
		}
		if err == io.EOF {
			b.mem, b.size = buf, int64(len(buf))
			return false, nil
		}
		if err != nil {
			return false, err
		}
	}
}

// spool moves the body to an unlinked file: what readMem read, then the
// rest of r.
func (b *reqBody) spool(r io.Reader, limit, hint int64) error {
	s := b.store
	if hint > 0 && !reserve(&s.disk, hint, s.diskLimit) {
		return errSpoolFull
	}
	b.diskHeld = max(hint, 0)
	f, err := s.create()
	if err != nil {
		return &spoolError{err}
	}
	b.f = f
	w := &spoolWriter{b: b}
	if len(b.mem) > 0 {
		if _, err := w.Write(b.mem); err != nil {
			return err
		}
	}
	s.mem.Add(-b.memHeld)
	b.mem, b.memHeld = nil, 0

	bp := copyBufs.Get().(*[]byte)
	defer copyBufs.Put(bp)
	buf := *bp
	for {
		// Whole buffers: a body sent in tiny records costs one write per
		// 64 KiB all the same.
		n, rerr := io.ReadFull(r, buf)
		if n > 0 {
			if b.size+int64(n) > limit {
				return errBodyTooLarge
			}
			if _, err := w.Write(buf[:n]); err != nil {
				return err
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			return rerr
		}
	}
	// Give back what the announced length reserved beyond the real size.
	if b.diskHeld > b.size {
		s.disk.Add(b.size - b.diskHeld)
		b.diskHeld = b.size
	}
	return nil
}

// spoolWriter appends to the spool file, reserving disk as it goes.
type spoolWriter struct{ b *reqBody }

func (w *spoolWriter) Write(p []byte) (int, error) {
	b := w.b
	if need := b.size + int64(len(p)) - b.diskHeld; need > 0 {
		// Reserve in steps, not per write.
		step := max(need, 1<<20)
		if !reserve(&b.store.disk, step, b.store.diskLimit) {
			if !reserve(&b.store.disk, need, b.store.diskLimit) {
				return 0, errSpoolFull
			}
			step = need
		}
		b.diskHeld += step
	}
	n, err := b.f.Write(p)
	b.size += int64(n)
	if err != nil {
		return n, &spoolError{err}
	}
	return n, nil
}

// create opens a new unlinked spool file: O_TMPFILE where the file system
// has it (the file never has a name), else a named file removed at once.
func (s *bodyStore) create() (*os.File, error) {
	s.dirOnce.Do(func() { s.dirErr = s.prepareDir() })
	if s.dirErr != nil {
		return nil, s.dirErr
	}
	fd, err := unix.Open(s.dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600)
	if err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(s.dir, "(body)")), nil
	}
	f, err := os.CreateTemp(s.dir, "body-")
	if err != nil {
		return nil, err
	}
	if err := os.Remove(f.Name()); err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// prepareDir creates the spool directory and removes files a crash left
// behind (only the named fallback files can outlive the process).
func (s *bodyStore) prepareDir() error {
	if err := os.MkdirAll(s.dir, 0o700); err != nil {
		return fmt.Errorf("spool directory: %w", err)
	}
	ents, err := os.ReadDir(s.dir)
	if err != nil {
		return fmt.Errorf("spool directory: %w", err)
	}
	for _, e := range ents {
		os.Remove(filepath.Join(s.dir, e.Name()))
	}
	return nil
}
