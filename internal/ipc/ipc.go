// Package ipc is the framed protocol between the manager and its children.
//
// The manager and a child talk over one end each of a unix socketpair. Every
// message is a frame: a one-byte type, a four-byte big-endian payload length
// and the payload. Payloads are encoded by hand (length-prefixed fields)
// because this sits on every request's hot path and gob or JSON would cost
// more than the rest of the round trip.
//
// The conversation is strictly one request at a time per child: the manager
// sends Run, the child answers with any number of Stdout and Stderr frames and
// exactly one Done. A child announces itself with Ready once, after start.
package ipc

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// Type is the kind of a frame.
type Type uint8

// Frame types.
const (
	TypeReady  Type = 1 // child → manager: started and able to take Run
	TypeRun    Type = 2 // manager → child: run one module once (payload Run)
	TypeStdout Type = 3 // child → manager: bytes the guest wrote to stdout
	TypeStderr Type = 4 // child → manager: bytes the guest wrote to stderr
	TypeDone   Type = 5 // child → manager: the run ended (payload Done)
	// TypePreload asks a fresh child to compile modules before its first
	// request (payload Preload); it answers with one Done.
	TypePreload Type = 6
	// TypeStdin carries part of a request body: Run.BodySize bytes of
	// them follow a Run frame (manager → child).
	TypeStdin Type = 7
	// TypeRoutes gives a child on the fast path the routes it may answer
	// by itself (payload Routes); it answers with one Done.
	TypeRoutes Type = 8
	// TypeBorrow asks a child on the fast path to stop taking requests
	// from connections and serve the manager; the child answers
	// TypeHeld once it has finished the request it was running (the
	// manager's CPU baseline for what it sends next). After the next
	// Done the child goes back to the fast path.
	TypeBorrow Type = 9
	TypeHeld   Type = 10
)

func (t Type) String() string {
	switch t {
	case TypeReady:
		return "ready"
	case TypeRun:
		return "run"
	case TypeStdout:
		return "stdout"
	case TypeStderr:
		return "stderr"
	case TypeDone:
		return "done"
	case TypePreload:
		return "preload"
	case TypeStdin:
		return "stdin"
	case TypeRoutes:
		return "routes"
	case TypeBorrow:
		return "borrow"
	case TypeHeld:
		return "held"
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// MaxPayload bounds one frame (and a streamed body). A Run frame carries a
// small request body, which the manager has already limited; this is a
// sanity cap against a corrupted length, not a policy.
const MaxPayload = 1 << 30

// MaxChildPayload bounds a frame a child may send. A child sends output in
// frames of at most 32 KiB and small Ready and Done frames; it is hostile
// once guest code has run in it, so the manager reads at most this much per
// frame (SetMaxPayload) instead of allocating whatever length it names.
const MaxChildPayload = 256 << 10

const headerLen = 5

// ErrFrameTooLarge is returned for a frame whose length exceeds MaxPayload.
var ErrFrameTooLarge = errors.New("ipc: frame too large")

// Writer writes frames. It buffers; call Flush to push them out.
type Writer struct {
	w     *bufio.Writer
	hdr   [headerLen]byte
	chunk []byte // WriteRun's copy buffer for streamed bodies
}

// NewWriter returns a Writer that buffers up to size bytes.
func NewWriter(w io.Writer, size int) *Writer {
	return &Writer{w: bufio.NewWriterSize(w, size)}
}

// WriteFrame writes one frame into the buffer.
func (w *Writer) WriteFrame(t Type, payload []byte) error {
	if len(payload) > MaxPayload {
		return ErrFrameTooLarge
	}
	w.hdr[0] = byte(t)
	binary.BigEndian.PutUint32(w.hdr[1:], uint32(len(payload)))
	if _, err := w.w.Write(w.hdr[:]); err != nil {
		return err
	}
	_, err := w.w.Write(payload)
	return err
}

// Flush writes buffered frames to the underlying writer.
func (w *Writer) Flush() error { return w.w.Flush() }

// Reader reads frames.
//
// A read that fails with a timeout (a deadline on the underlying
// connection) can be retried: the Reader keeps the part of the frame it
// already has, so the manager can wait for a child's next frame with a
// deadline and look at its clocks in between.
type Reader struct {
	r   *bufio.Reader
	hdr [headerLen]byte
	buf []byte
	max int // largest payload accepted

	// The frame being read: header bytes, then payload bytes, so far.
	hdrN, payN int
	n          int // payload length, once the header is complete
}

// NewReader returns a Reader with a read buffer of size bytes.
func NewReader(r io.Reader, size int) *Reader {
	return &Reader{r: bufio.NewReaderSize(r, size), max: MaxPayload}
}

// SetMaxPayload lowers the largest payload the Reader accepts: a longer
// frame fails with ErrFrameTooLarge before anything is allocated for it.
// The stream cannot be resynchronised after that; drop the peer.
func (r *Reader) SetMaxPayload(n int) {
	r.max = min(n, MaxPayload)
}

// ReadFrame reads the next frame. The payload is valid only until the next
// call to ReadFrame; copy it to keep it. At a clean end of stream it returns
// io.EOF; a stream cut inside a frame is io.ErrUnexpectedEOF. Any other
// error of the underlying reader is returned as is, with the partial frame
// kept for the next call.
func (r *Reader) ReadFrame() (Type, []byte, error) {
	for r.hdrN < headerLen {
		k, err := r.r.Read(r.hdr[r.hdrN:])
		r.hdrN += k
		if err != nil {
			return 0, nil, r.cut(err)
		}
	}
	if r.payN == 0 && r.n == 0 {
		n := binary.BigEndian.Uint32(r.hdr[1:])
		if uint64(n) > uint64(r.max) {
			r.hdrN = 0
			return 0, nil, ErrFrameTooLarge
		}
		r.n = int(n)
		if cap(r.buf) < r.n {
			r.buf = make([]byte, r.n)
		}
	}
	for r.payN < r.n {
		k, err := r.r.Read(r.buf[r.payN:r.n])
		r.payN += k
		if err != nil {
			return 0, nil, r.cut(err)
		}
	}
	p := r.buf[:r.n]
	r.hdrN, r.payN, r.n = 0, 0, 0
	// Don't keep a huge body buffer alive for the life of the connection
	// (p stays valid: it is the old array).
	if cap(r.buf) > 1<<20 {
		r.buf = nil
	}
	return Type(r.hdr[0]), p, nil
}

// Buffered is how many bytes are read but not yet returned in frames.
func (r *Reader) Buffered() int { return r.r.Buffered() }

// cut turns an end of stream inside a frame into io.ErrUnexpectedEOF.
func (r *Reader) cut(err error) error {
	if err == io.EOF && r.hdrN > 0 {
		return io.ErrUnexpectedEOF
	}
	return err
}
