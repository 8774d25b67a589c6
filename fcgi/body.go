package fcgi

import (
	"io"
	"sync"
)

// body is the FCGI_STDIN stream of one request: an unbounded queue of chunks
// filled by the connection's reader goroutine and drained by the handler.
// Unlike an io.Pipe, push does not wait for the handler, so the reader keeps
// watching the socket (ABORT_REQUEST, EOF, GET_VALUES) while the handler
// runs. Only when more than max bytes are buffered and unread does push wait
// for the handler to catch up (back-pressure instead of unbounded memory).
type body struct {
	mu       sync.Mutex
	cond     sync.Cond // signals both directions; L is &mu
	chunks   [][]byte
	off      int // read offset into chunks[0]
	buffered int // unread bytes in chunks
	max      int // push waits while buffered > max
	eof      bool
	err      error // set by fail; Read returns it
	discard  bool  // the handler is done; drop everything
}

func (b *body) init(max int) {
	b.cond.L = &b.mu
	b.max = max
}

// Read implements io.Reader for Request.Body. It returns io.EOF after the
// empty STDIN record, and the cancellation cause if the request was aborted
// or its connection closed.
func (b *body) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	for {
		if b.err != nil {
			return 0, b.err
		}
		if len(b.chunks) > 0 {
			break
		}
		if b.eof || b.discard {
			return 0, io.EOF
		}
		if len(p) == 0 {
			return 0, nil
		}
		b.cond.Wait()
	}
	n := 0
	for n < len(p) && len(b.chunks) > 0 {
		c := b.chunks[0][b.off:]
		k := copy(p[n:], c)
		n += k
		if k == len(c) {
			b.chunks[0] = nil
			b.chunks = b.chunks[1:]
			b.off = 0
		} else {
			b.off += k
		}
	}
	wasFull := b.buffered > b.max
	b.buffered -= n
	if wasFull && b.buffered <= b.max {
		b.cond.Broadcast() // wake a push waiting for room
	}
	return n, nil
}

// push appends a chunk (which the body takes ownership of). It waits while
// more than max bytes are buffered, until the handler reads, returns, or
// the request fails.
func (b *body) push(chunk []byte) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.discard || b.err != nil {
		return
	}
	if len(b.chunks) == 0 && cap(b.chunks) > 0 {
		b.chunks = b.chunks[:0:cap(b.chunks)]
	}
	b.chunks = append(b.chunks, chunk)
	b.buffered += len(chunk)
	b.cond.Broadcast()
	for b.buffered > b.max && !b.discard && b.err == nil {
		b.cond.Wait()
	}
}

// closeWrite marks the end of the stream (the empty STDIN record).
func (b *body) closeWrite() {
	b.mu.Lock()
	b.eof = true
	b.cond.Broadcast()
	b.mu.Unlock()
}

// fail makes every later Read return err and releases a waiting push.
func (b *body) fail(err error) {
	b.mu.Lock()
	if b.err == nil {
		b.err = err
	}
	b.chunks, b.off, b.buffered = nil, 0, 0
	b.cond.Broadcast()
	b.mu.Unlock()
}

// drop is called when the handler has returned: buffered and future data is
// thrown away.
func (b *body) drop() {
	b.mu.Lock()
	b.discard = true
	b.chunks, b.off, b.buffered = nil, 0, 0
	b.cond.Broadcast()
	b.mu.Unlock()
}

var _ io.Reader = (*body)(nil)
