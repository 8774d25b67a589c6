package fcgi

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"runtime/debug"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/internal/rawio"
)

const (
	// readBufSize is the per-connection read buffer. Larger records (STDIN
	// and PARAMS up to 64 KiB) are read straight into their destination.
	readBufSize = 8 << 10

	// lingerTimeout bounds how long a connection that will not be kept is
	// drained after the response, waiting for the rest of the request's
	// STDIN, so that closing it does not reset the peer before it read the
	// response.
	lingerTimeout = 2 * time.Second

	// paramsAllowance is how much PARAMS buffer every request may use
	// without drawing on Server.MaxParamsTotal: nginx sends a few KiB.
	// With ConnLimit it bounds what the allowances can add up to.
	paramsAllowance = 16 << 10

	// maxKeptParamsBuf is the largest params buffer kept between requests
	// (within paramsAllowance).
	maxKeptParamsBuf = paramsAllowance
)

// errStop ends the read loop of a connection that is closing on purpose.
var errStop = errors.New("fcgi: connection closing")

// conn is one connection from the web server. Its reader goroutine (serve)
// parses records; at most one request is active at a time and its handler
// runs in a separate goroutine owned by the conn.
type conn struct {
	srv    *Server
	rwc    net.Conn
	remote string
	log    *slog.Logger

	ctx       context.Context // canceled when the connection ends
	cancel    context.CancelCauseFunc
	stopAfter func() bool   // unregisters the ctx watcher
	afterDone chan struct{} // closed when the ctx watcher ran

	// Owned by the reader goroutine.
	br      *bufio.Reader
	hdr     [headerLen]byte
	pbuf    []byte // PARAMS of the active request
	scratch []byte // content of small records
	small   [64]byte

	// wmu serializes writes of whole records to rwc.
	wmu  sync.Mutex
	werr error  // sticky write error; guarded by wmu
	mbuf []byte // management records; guarded by wmu

	// mu guards the request slot.
	mu      sync.Mutex
	active  *reqState // the request occupying the connection, or nil
	closing bool      // accept no more requests; close when the slot frees
	since   time.Time // when the connection was accepted, last began a request or went idle

	evicted bool // closed to make room under ConnLimit; guarded by srv.mu

	handlers sync.WaitGroup
}

// reqState is everything about one request, in one allocation.
type reqState struct {
	req    Request
	w      ResponseWriter
	body   body
	cancel context.CancelCauseFunc

	// Owned by the reader goroutine.
	paramsDone bool
	rejected   bool // answered 431 or 503; PARAMS and STDIN are discarded
	// paramsHeld is what the request holds of Server.MaxParamsTotal;
	// swapped to 0 when released, so releasing twice is harmless.
	paramsHeld atomic.Int64

	// Written by the reader goroutine under conn.mu.
	started bool // handler goroutine launched

	// Guarded by conn.mu.
	stdinDone   bool // empty STDIN seen (or aborted): no more input expected
	handlerDone bool // END_REQUEST queued; the response is complete
}

func (s *Server) newConn(rwc net.Conn) *conn {
	c := &conn{
		srv: s,
		// Raw non-blocking reads and writes: see package rawio.
		rwc:       rawio.Wrap(rwc),
		log:       s.logger(),
		afterDone: make(chan struct{}),
	}
	c.remote = remoteName(rwc)
	c.scratch = c.small[:0]
	c.since = time.Now()
	c.ctx, c.cancel = context.WithCancelCause(s.base)
	c.stopAfter = context.AfterFunc(c.ctx, func() {
		// Server.Close or the BaseContext ended: close the connection and
		// release a handler blocked in Body.Read.
		defer close(c.afterDone)
		c.rwc.Close()
		c.mu.Lock()
		rs := c.active
		c.mu.Unlock()
		if rs != nil {
			rs.body.fail(context.Cause(c.ctx))
		}
	})
	if !s.trackConn(c, true) {
		if !c.stopAfter() {
			<-c.afterDone
		}
		c.cancel(ErrServerClosed)
		rwc.Close()
		return nil
	}
	return c
}

// remoteName names the peer for log lines. Unix-socket peers are unnamed
// ("@"), so they are named after the socket they connected to.
func remoteName(rwc net.Conn) string {
	if a := rwc.RemoteAddr(); a != nil {
		if s := a.String(); s != "" && s != "@" {
			return s
		}
	}
	if a := rwc.LocalAddr(); a != nil {
		return a.Network() + ":" + a.String()
	}
	return "unknown"
}

// serve runs the read loop and cleans up: when it returns, the connection
// is closed and its handler goroutine has finished.
func (c *conn) serve() {
	if v, ok := c.srv.brPool.Get().(*bufio.Reader); ok {
		v.Reset(c.rwc)
		c.br = v
	} else {
		c.br = bufio.NewReaderSize(c.rwc, readBufSize)
	}
	if d := c.srv.IdleTimeout; d > 0 {
		c.rwc.SetReadDeadline(time.Now().Add(d))
	}

	err := c.readLoop()

	c.mu.Lock()
	quiet := c.closing
	c.closing = true
	rs := c.active
	running := rs != nil && !rs.handlerDone
	reading := rs != nil && !rs.stdinDone
	c.mu.Unlock()
	cause := c.readError(err, quiet, running, reading)

	if !c.stopAfter() {
		<-c.afterDone
	}
	c.cancel(cause)
	c.rwc.Close()
	if rs != nil {
		rs.body.fail(context.Cause(c.ctx))
	}
	c.handlers.Wait()
	if rs != nil && !rs.started {
		rs.w.release()
		rs.cancel(cause)
	}
	if rs != nil {
		c.releaseParams(rs)
	}

	c.br.Reset(nil)
	c.srv.brPool.Put(c.br)
	c.br = nil
	c.srv.trackConn(c, false)
}

// readError logs why the read loop ended and returns the cancellation
// cause for a request still running.
func (c *conn) readError(err error, quiet, running, reading bool) error {
	var perr *protocolError
	switch {
	case errors.As(err, &perr):
		if !quiet {
			c.log.Warn("fcgi: protocol error, closing connection", "remote", c.remote, "err", err)
		}
		return fmt.Errorf("%w: %w", ErrConnClosed, err)
	case quiet || errors.Is(err, errStop) || errors.Is(err, net.ErrClosed):
		return ErrConnClosed
	case errors.Is(err, io.EOF):
		if running {
			c.log.Debug("fcgi: connection closed by web server during request", "remote", c.remote)
		}
		return ErrConnClosed
	case errors.Is(err, os.ErrDeadlineExceeded) && reading:
		c.log.Warn("fcgi: request input did not arrive within RequestReadTimeout, closing connection", "remote", c.remote, "timeout", c.srv.RequestReadTimeout)
		return fmt.Errorf("%w: %w", ErrConnClosed, ErrReadTimeout)
	case errors.Is(err, os.ErrDeadlineExceeded):
		c.log.Debug("fcgi: idle timeout, closing connection", "remote", c.remote)
		return ErrConnClosed
	default:
		c.log.Debug("fcgi: read error, closing connection", "remote", c.remote, "err", err)
		return fmt.Errorf("%w: %w", ErrConnClosed, err)
	}
}

func (c *conn) readLoop() error {
	for {
		if n, err := io.ReadFull(c.br, c.hdr[:]); err != nil {
			if errors.Is(err, io.ErrUnexpectedEOF) {
				return protocolErrorf("truncated record header: got %d of %d bytes", n, headerLen)
			}
			return err
		}
		h, err := parseHeader(c.hdr[:])
		if err != nil {
			return err
		}
		if err := c.dispatch(h); err != nil {
			return err
		}
		if h.paddingLength > 0 {
			if n, err := c.br.Discard(int(h.paddingLength)); err != nil {
				return truncated(h, "padding", n, int(h.paddingLength), err)
			}
		}
	}
}

// truncated turns an EOF inside a record into a protocol error.
func truncated(h header, what string, got, want int, err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return protocolErrorf("truncated %s record %s: got %d of %d bytes", typeName(h.typ), what, got, want)
	}
	return err
}

// readContent reads the record's content into the scratch buffer.
func (c *conn) readContent(h header) ([]byte, error) {
	n := int(h.contentLength)
	if cap(c.scratch) < n {
		c.scratch = make([]byte, n)
	}
	b := c.scratch[:n]
	if k, err := io.ReadFull(c.br, b); err != nil {
		return nil, truncated(h, "content", k, n, err)
	}
	return b, nil
}

// skipContent discards the record's content.
func (c *conn) skipContent(h header) error {
	n := int(h.contentLength)
	if k, err := c.br.Discard(n); err != nil {
		return truncated(h, "content", k, n, err)
	}
	return nil
}

func (c *conn) dispatch(h header) error {
	if h.id == 0 { // management record
		if h.typ == typeGetValues {
			return c.getValues(h)
		}
		if err := c.skipContent(h); err != nil {
			return err
		}
		c.log.Debug("fcgi: unknown management record", "remote", c.remote, "type", typeName(h.typ))
		return c.writeUnknownType(h.typ)
	}
	switch h.typ {
	case typeBeginRequest:
		return c.beginRequest(h)
	case typeParams:
		return c.params(h)
	case typeStdin:
		return c.stdin(h)
	case typeAbortRequest:
		if err := c.skipContent(h); err != nil {
			return err
		}
		return c.abort(h.id)
	case typeData: // only the FILTER role uses DATA
		c.log.Debug("fcgi: ignoring DATA record", "remote", c.remote, "id", h.id)
		return c.skipContent(h)
	}
	if err := c.skipContent(h); err != nil {
		return err
	}
	c.log.Debug("fcgi: unknown record type", "remote", c.remote, "type", typeName(h.typ), "id", h.id)
	return c.writeUnknownType(h.typ)
}

func (c *conn) beginRequest(h header) error {
	if h.contentLength != 8 {
		return protocolErrorf("BEGIN_REQUEST with content length %d, want 8", h.contentLength)
	}
	b, err := c.readContent(h)
	if err != nil {
		return err
	}
	role := binary.BigEndian.Uint16(b[0:2])
	keep := b[2]&flagKeepConn != 0

	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		return errStop
	}
	if rs := c.active; rs != nil {
		switch {
		case rs.handlerDone:
			// The response is complete and the web server moved on without
			// finishing the old STDIN stream; forget it.
			rs.stdinDone = true
			c.active = nil
		case rs.req.ID == h.id:
			c.mu.Unlock()
			return protocolErrorf("BEGIN_REQUEST for request id %d, which is still active", h.id)
		default:
			c.mu.Unlock()
			c.log.Debug("fcgi: refusing a second request on the connection", "remote", c.remote, "id", h.id, "active", rs.req.ID)
			return c.writeEndRequest(h.id, statusCantMpxConn)
		}
	}
	if role != roleResponder {
		c.mu.Unlock()
		c.log.Debug("fcgi: refusing unsupported role", "remote", c.remote, "id", h.id, "role", role)
		return c.writeEndRequest(h.id, statusUnknownRole)
	}
	if c.srv.shuttingDown() {
		c.closing = true
		c.mu.Unlock()
		return errStop
	}
	rs := &reqState{}
	rs.req.ID = h.id
	rs.req.KeepConn = keep
	rs.req.ctx, rs.cancel = context.WithCancelCause(c.ctx)
	rs.body.init(c.srv.maxBodyBuffer())
	rs.req.Body = &rs.body
	rs.w.init(c, rs.req.ctx, h.id)
	c.active = rs
	c.since = time.Now()
	// Its PARAMS must be complete within RequestReadTimeout; the idle
	// timeout no longer applies.
	c.readDeadlineLocked(c.since)
	c.mu.Unlock()

	c.pbuf = c.pbuf[:0]
	return nil
}

// readDeadlineLocked sets the read deadline for request input expected
// from now on: RequestReadTimeout, or none. c.mu is held.
func (c *conn) readDeadlineLocked(now time.Time) {
	var t time.Time
	if d := c.srv.RequestReadTimeout; d > 0 {
		t = now.Add(d)
	}
	c.rwc.SetReadDeadline(t)
}

// waitingSince reports since when the connection has been waiting without
// a running handler (idle, or its request not yet complete), and whether
// it is. srv.mu is held.
func (c *conn) waitingSince() (time.Time, bool) {
	if c.evicted {
		return time.Time{}, false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closing {
		return time.Time{}, false
	}
	if rs := c.active; rs != nil && rs.started && !rs.handlerDone {
		return time.Time{}, false
	}
	return c.since, true
}

// closeIfWaiting closes the connection if it is still waiting as it was
// since then (no handler started meanwhile). srv.mu is held.
func (c *conn) closeIfWaiting(since time.Time) bool {
	c.mu.Lock()
	rs := c.active
	ok := !c.closing && c.since.Equal(since) && (rs == nil || !rs.started || rs.handlerDone)
	if ok {
		c.closing = true
	}
	c.mu.Unlock()
	if ok {
		c.rwc.Close()
	}
	return ok
}

// releaseParams gives back what rs held of MaxParamsTotal.
func (c *conn) releaseParams(rs *reqState) {
	if n := rs.paramsHeld.Swap(0); n != 0 {
		c.srv.paramsHeld.Add(-n)
	}
}

// current returns the active request if it has the given id.
func (c *conn) current(id uint16) *reqState {
	c.mu.Lock()
	rs := c.active
	c.mu.Unlock()
	if rs == nil || rs.req.ID != id {
		return nil
	}
	return rs
}

func (c *conn) params(h header) error {
	rs := c.current(h.id)
	if rs == nil || rs.paramsDone {
		c.log.Debug("fcgi: ignoring PARAMS record", "remote", c.remote, "id", h.id)
		return c.skipContent(h)
	}
	n := int(h.contentLength)
	if n == 0 {
		rs.paramsDone = true
		if rs.rejected {
			return nil
		}
		m, err := decodeParams(c.pbuf)
		if err != nil {
			return err
		}
		rs.req.Params = m
		if cap(c.pbuf) > maxKeptParamsBuf {
			c.pbuf = nil
		}
		c.startHandler(rs)
		return nil
	}
	if rs.rejected {
		return c.skipContent(h)
	}
	if max := c.srv.maxParamsBytes(); len(c.pbuf)+n > max {
		if err := c.skipContent(h); err != nil {
			return err
		}
		c.log.Warn("fcgi: request params exceed MaxParamsBytes, answering 431", "remote", c.remote, "id", h.id, "limit", max)
		c.reject(rs, response431)
		return nil
	}
	newCap := growCap(c.pbuf, n)
	if total := int64(c.srv.MaxParamsTotal); total > 0 {
		// What the buffer will hold beyond paramsAllowance, capacity
		// included; the decoded Params (no larger) are covered by the
		// same reservation. Ordinary requests stay within the allowance,
		// so peers hoarding the shared budget cannot starve them.
		if delta := int64(newCap-paramsAllowance) - rs.paramsHeld.Load(); delta > 0 {
			if c.srv.paramsHeld.Add(delta) > total {
				c.srv.paramsHeld.Add(-delta)
				if err := c.skipContent(h); err != nil {
					return err
				}
				c.log.Warn("fcgi: params of all requests together exceed MaxParamsTotal, answering 503", "remote", c.remote, "id", h.id, "limit", total)
				c.reject(rs, response503)
				return nil
			}
			rs.paramsHeld.Add(delta)
		}
	}
	old := len(c.pbuf)
	c.pbuf = growLen(c.pbuf, n)
	if k, err := io.ReadFull(c.br, c.pbuf[old:]); err != nil {
		return truncated(h, "content", k, n, err)
	}
	return nil
}

// reject answers a request whose params are over a limit; the rest of its
// PARAMS and STDIN is discarded.
func (c *conn) reject(rs *reqState, response string) {
	rs.rejected = true
	c.pbuf = nil
	c.releaseParams(rs)
	c.respondDirect(rs, response)
}

// growCap is the capacity growLen(b, n) will have.
func growCap(b []byte, n int) int {
	if cap(b)-len(b) < n {
		return max(2*cap(b), len(b)+n, 4096)
	}
	return cap(b)
}

// growLen extends b by n bytes.
func growLen(b []byte, n int) []byte {
	if c := growCap(b, n); c != cap(b) {
		nb := make([]byte, len(b), c)
		copy(nb, b)
		b = nb
	}
	return b[:len(b)+n]
}

const response431 = "Status: 431 Request Header Fields Too Large\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Content-Length: 32\r\n" +
	"\r\n" +
	"Request header fields too large\n"

const response503 = "Status: 503 Service Unavailable\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Retry-After: 1\r\n" +
	"Content-Length: 32\r\n" +
	"\r\n" +
	"Server busy; try again shortly.\n"

const response500 = "Status: 500 Internal Server Error\r\n" +
	"Content-Type: text/plain; charset=utf-8\r\n" +
	"Content-Length: 22\r\n" +
	"\r\n" +
	"Internal Server Error\n"

func (c *conn) stdin(h header) error {
	c.mu.Lock()
	rs := c.active
	if rs != nil && rs.req.ID == h.id && !rs.paramsDone && !rs.stdinDone {
		c.mu.Unlock()
		// php-fpm rejects this too; buffering it could also deadlock, as
		// no handler reads the body before the params are complete.
		return protocolErrorf("STDIN record for request id %d before the end of its PARAMS", h.id)
	}
	if rs == nil || rs.req.ID != h.id || rs.stdinDone {
		c.mu.Unlock()
		// e.g. the terminator of a body the handler never read, after the
		// request already ended; php-fpm skips these too.
		c.log.Debug("fcgi: ignoring STDIN record", "remote", c.remote, "id", h.id, "length", h.contentLength)
		return c.skipContent(h)
	}
	if h.contentLength == 0 {
		rs.stdinDone = true
		closeNow := false
		if rs.handlerDone {
			closeNow = c.freeSlotLocked()
		} else if !c.closing {
			// All input is in: no read timeout while the handler runs.
			c.rwc.SetReadDeadline(time.Time{})
		}
		c.mu.Unlock()
		rs.body.closeWrite()
		if closeNow {
			return errStop
		}
		return nil
	}
	drop := rs.handlerDone || rs.rejected
	c.mu.Unlock()
	if drop {
		if err := c.skipContent(h); err != nil {
			return err
		}
	} else {
		n := int(h.contentLength)
		chunk := make([]byte, n)
		if k, err := io.ReadFull(c.br, chunk); err != nil {
			return truncated(h, "content", k, n, err)
		}
		rs.body.push(chunk) // waits only if MaxBodyBuffer bytes are unread
	}
	// The body made progress: the next record gets a full
	// RequestReadTimeout, counted from now, so time spent waiting for the
	// handler in push does not count against the web server.
	if c.srv.RequestReadTimeout > 0 {
		c.mu.Lock()
		if c.active == rs && !rs.stdinDone && !c.closing {
			c.readDeadlineLocked(time.Now())
		}
		c.mu.Unlock()
	}
	return nil
}

func (c *conn) abort(id uint16) error {
	c.mu.Lock()
	rs := c.active
	if rs == nil || rs.req.ID != id {
		c.mu.Unlock()
		c.log.Debug("fcgi: ignoring ABORT_REQUEST", "remote", c.remote, "id", id)
		return nil
	}
	rs.stdinDone = true // the web server sends nothing more for it
	if rs.handlerDone {
		closeNow := c.freeSlotLocked()
		c.mu.Unlock()
		if closeNow {
			return errStop
		}
		return nil
	}
	if !c.closing {
		c.rwc.SetReadDeadline(time.Time{}) // no input is expected now
	}
	c.mu.Unlock()
	rs.cancel(ErrRequestAborted)
	rs.body.fail(ErrRequestAborted)
	if !rs.started {
		// Still reading PARAMS: there is no handler to wait for.
		rs.paramsDone = true
		c.endRequest(rs)
	}
	return nil
}

// freeSlotLocked frees the request slot after a complete request. It
// reports whether the connection must now be closed. c.mu is held.
func (c *conn) freeSlotLocked() bool {
	c.active = nil
	if c.closing || c.srv.shuttingDown() {
		c.closing = true
		return true
	}
	c.since = time.Now()
	if d := c.srv.IdleTimeout; d > 0 {
		c.rwc.SetReadDeadline(c.since.Add(d))
	} else if c.srv.RequestReadTimeout > 0 {
		c.rwc.SetReadDeadline(time.Time{}) // the request's deadline is over
	}
	return false
}

func (c *conn) startHandler(rs *reqState) {
	c.mu.Lock()
	rs.started = true
	c.mu.Unlock()
	c.handlers.Add(1)
	go c.runHandler(rs)
}

func (c *conn) runHandler(rs *reqState) {
	defer c.handlers.Done()
	w := &rs.w
	w.acquire()
	defer func() {
		if p := recover(); p != nil {
			c.log.Error("fcgi: handler panic", "remote", c.remote, "id", rs.req.ID, "panic", p, "stack", string(debug.Stack()))
			if !w.sent && !w.done {
				w.discardOutput()
				w.Write([]byte(response500))
			}
		}
		c.endRequest(rs)
	}()
	if c.srv.Handler == nil {
		w.Write([]byte(response500))
		return
	}
	c.srv.Handler.ServeFCGI(w, &rs.req)
}

// respondDirect answers a request without a handler (431).
func (c *conn) respondDirect(rs *reqState, response string) {
	rs.w.acquire()
	rs.w.Write([]byte(response))
	c.endRequest(rs)
}

// endRequest sends the rest of the response, the terminators and
// END_REQUEST, then frees the slot or closes the connection.
func (c *conn) endRequest(rs *reqState) {
	w := &rs.w
	if w.abortConn && rs.req.ctx.Err() == nil {
		c.abortResponse(rs)
		return
	}
	w.finalize(rs.req.ctx.Err() != nil)
	rs.body.drop()
	c.releaseParams(rs)

	// Hold wmu while freeing the slot so that the next request's output
	// cannot overtake this END_REQUEST; free the slot before the write so
	// that a BEGIN_REQUEST sent in reply to it finds the slot free.
	c.wmu.Lock()
	c.mu.Lock()
	rs.handlerDone = true
	if !rs.req.KeepConn {
		c.closing = true
	}
	closeNow, linger := false, false
	if rs.stdinDone {
		if c.active == rs {
			closeNow = c.freeSlotLocked()
		}
	} else if c.closing || c.srv.shuttingDown() {
		c.closing = true
		linger = true
	}
	c.mu.Unlock()
	if c.ctx.Err() == nil { // else the connection is being torn down
		c.writeLocked(w.out)
	}
	c.wmu.Unlock()

	w.release()
	rs.cancel(errRequestDone)
	switch {
	case closeNow:
		c.rwc.Close()
	case linger:
		c.linger()
	}
}

var errRequestDone = errors.New("fcgi: request complete")

// abortResponse sends what the handler wrote and closes the connection
// without ending the request (ResponseWriter.Abort).
func (c *conn) abortResponse(rs *reqState) {
	w := &rs.w
	w.acquire()
	w.closeRecord()
	rs.body.drop()
	c.releaseParams(rs)
	c.wmu.Lock()
	c.mu.Lock()
	rs.handlerDone = true
	c.closing = true
	c.mu.Unlock()
	if c.ctx.Err() == nil {
		c.writeLocked(w.out)
	}
	c.wmu.Unlock()
	w.release()
	rs.cancel(errRequestDone)
	c.rwc.Close()
}

// linger half-closes the connection and lets the reader drain the rest of
// the request for a while; the reader closes it at the empty STDIN record,
// EOF or the deadline.
func (c *conn) linger() {
	cw, ok := c.rwc.(interface{ CloseWrite() error })
	if !ok || cw.CloseWrite() != nil {
		c.rwc.Close()
		return
	}
	c.rwc.SetReadDeadline(time.Now().Add(lingerTimeout))
}

// closeIfIdle closes the connection if no request occupies it.
func (c *conn) closeIfIdle() {
	c.mu.Lock()
	idle := c.active == nil
	if idle {
		c.closing = true
	}
	c.mu.Unlock()
	if idle {
		c.rwc.Close()
	}
}

// closeNow closes the connection regardless of its state.
func (c *conn) closeNow() {
	c.mu.Lock()
	c.closing = true
	c.mu.Unlock()
	c.rwc.Close()
}

// writeLocked writes b; wmu is held. A failed write closes the connection.
func (c *conn) writeLocked(b []byte) error {
	if c.werr != nil {
		return c.werr
	}
	if _, err := c.rwc.Write(b); err != nil {
		c.werr = fmt.Errorf("%w: %w", ErrConnClosed, err)
		c.rwc.Close()
	}
	return c.werr
}

func (c *conn) write(b []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	return c.writeLocked(b)
}

func (c *conn) writeBuffers(v *net.Buffers) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.werr != nil {
		return c.werr
	}
	if _, err := v.WriteTo(c.rwc); err != nil {
		c.werr = fmt.Errorf("%w: %w", ErrConnClosed, err)
		c.rwc.Close()
	}
	return c.werr
}

func (c *conn) writeEndRequest(id uint16, protocolStatus uint8) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mbuf = appendEndRequest(c.mbuf[:0], id, 0, protocolStatus)
	return c.writeLocked(c.mbuf)
}

func (c *conn) writeUnknownType(typ uint8) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mbuf = appendUnknownType(c.mbuf[:0], typ)
	return c.writeLocked(c.mbuf)
}

// getValues answers GET_VALUES with the asked variables we know.
func (c *conn) getValues(h header) error {
	b, err := c.readContent(h)
	if err != nil {
		return err
	}
	if _, err := countPairs(b); err != nil {
		return err
	}
	var mpxs, conns, reqs bool
	forEachPair(b, func(name, _ []byte) {
		switch string(name) {
		case valueMpxsConns:
			mpxs = true
		case valueMaxConns:
			conns = c.srv.MaxConns > 0
		case valueMaxReqs:
			reqs = c.srv.MaxReqs > 0
		}
	})
	var content []byte
	if mpxs {
		content = appendPair(content, valueMpxsConns, "0")
	}
	if conns {
		content = appendPair(content, valueMaxConns, strconv.Itoa(c.srv.MaxConns))
	}
	if reqs {
		content = appendPair(content, valueMaxReqs, strconv.Itoa(c.srv.MaxReqs))
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mbuf = appendRecord(c.mbuf[:0], typeGetValuesResult, 0, content)
	return c.writeLocked(c.mbuf)
}
