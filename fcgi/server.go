package fcgi

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

const (
	defaultMaxParamsBytes = 1 << 20
	defaultMaxBodyBuffer  = 1 << 20
)

// A Server serves FastCGI connections. Set its fields before the first call
// to Serve or ServeConn and do not change them afterwards; the zero value
// (apart from Handler) is usable. A Server must not be copied after use.
type Server struct {
	// Handler serves each request. If nil, requests get a 500 response.
	Handler Handler

	// MaxConns and MaxReqs are reported as FCGI_MAX_CONNS and
	// FCGI_MAX_REQS in GET_VALUES_RESULT when asked for. They only inform
	// the web server; 0 means "not set" and the variable is omitted.
	MaxConns int
	MaxReqs  int

	// MaxParamsBytes caps the total PARAMS content of one request; 0 means
	// 1 MiB. A request over the limit is answered by the server itself with
	// "Status: 431 Request Header Fields Too Large" without calling the
	// Handler. The rest of its PARAMS and STDIN is read and discarded, so
	// the connection stays in sync and is kept if FCGI_KEEP_CONN was set.
	MaxParamsBytes int

	// MaxParamsTotal caps the PARAMS bytes held beyond a 16 KiB allowance
	// per request, for all requests of the server together, from their
	// first PARAMS record until the request ends (the decoded Params live
	// that long); 0 means no cap. A request that would pass it is
	// answered by the server itself with "Status: 503 Service
	// Unavailable" and "Retry-After: 1", like one over MaxParamsBytes.
	// With ConnLimit it bounds what stalled or queued requests' headers
	// can cost, whatever the peers send (ConnLimit × 16 KiB +
	// MaxParamsTotal of buffers, and as much again of decoded Params),
	// while ordinary requests, within the allowance, are never refused.
	MaxParamsTotal int

	// MaxBodyBuffer caps the request body bytes received but not yet read
	// by the handler; 0 means 1 MiB. While more is buffered, the server
	// stops reading the connection until the handler reads, so during that
	// time it does not notice ABORT_REQUEST or EOF. Below the cap the
	// connection is read continuously, whatever the handler does.
	MaxBodyBuffer int

	// IdleTimeout closes a connection that has no request for this long:
	// before its first request and between requests on a kept connection.
	// It never applies while a request is active. 0 means no timeout.
	IdleTimeout time.Duration

	// RequestReadTimeout bounds how long a request's input may take to
	// arrive; 0 means no limit. Its PARAMS must be complete within it of
	// its BEGIN_REQUEST, and while its STDIN is open each record must
	// come within it of the previous one (or of the handler taking the
	// previous one, when MaxBodyBuffer made the reader wait): a slow
	// upload that keeps moving is never cut, a stalled one is. Past it
	// the connection is closed and the request's context canceled. Once
	// the empty STDIN record arrived, no read timeout applies while the
	// handler runs.
	RequestReadTimeout time.Duration

	// ConnLimit caps the open connections; 0 means no cap. At the cap, a
	// new connection takes the place of the connection that has waited
	// longest without a running handler (idle between requests, or still
	// sending its PARAMS), which is closed, as nginx reuses its idle
	// keep-alive connections; if every connection has a running handler,
	// the new one is closed at once. Either way established requests go
	// on, and a web server can always reach the server once a request
	// ends.
	ConnLimit int

	// Logger receives one line per protocol error (Warn) and details on
	// ignored records and closed connections (Debug). nil means
	// slog.Default().
	Logger *slog.Logger

	// BaseContext optionally returns the parent of all request contexts;
	// it is called once, by the first Serve or ServeConn. Canceling it
	// cancels every request and closes every connection. nil means
	// context.Background().
	BaseContext func() context.Context

	initOnce   sync.Once
	base       context.Context // canceled by Close
	baseCancel context.CancelCauseFunc
	done       chan struct{} // closed when Shutdown or Close starts
	doneOnce   sync.Once
	inShutdown atomic.Bool

	mu        sync.Mutex
	listeners map[*net.Listener]bool // value: already closed
	conns     map[*conn]struct{}
	evicted   int           // conns in conns closed to make room; not counted against ConnLimit
	changed   chan struct{} // closed when a listener or conn goes away
	refusedAt time.Time     // last "connection limit reached" log line

	paramsHeld atomic.Int64 // PARAMS bytes held, against MaxParamsTotal

	brPool  sync.Pool // *bufio.Reader
	outPool sync.Pool // *[]byte of cap outBufSize
}

func (s *Server) init() {
	s.initOnce.Do(func() {
		parent := context.Background()
		if s.BaseContext != nil {
			if ctx := s.BaseContext(); ctx != nil {
				parent = ctx
			}
		}
		s.base, s.baseCancel = context.WithCancelCause(parent)
		s.done = make(chan struct{})
	})
}

func (s *Server) logger() *slog.Logger {
	if s.Logger != nil {
		return s.Logger
	}
	return slog.Default()
}

func (s *Server) maxParamsBytes() int {
	if s.MaxParamsBytes > 0 {
		return s.MaxParamsBytes
	}
	return defaultMaxParamsBytes
}

func (s *Server) maxBodyBuffer() int {
	if s.MaxBodyBuffer > 0 {
		return s.MaxBodyBuffer
	}
	return defaultMaxBodyBuffer
}

func (s *Server) shuttingDown() bool { return s.inShutdown.Load() }

// startShutdown marks the server as shutting down.
func (s *Server) startShutdown() {
	s.init()
	s.inShutdown.Store(true)
	s.doneOnce.Do(func() { close(s.done) })
}

// Serve accepts connections on l and serves each in its own goroutine. It
// returns ErrServerClosed after Shutdown or Close, and any other Accept
// error that is not temporary; on a temporary error (such as EMFILE) it
// backs off, from 5 ms doubling to 1 s, and retries, as net/http does;
// out of descriptors (EMFILE, ENFILE) it also closes the connection that
// has waited longest without a running handler, if any, to make room.
// Established connections are served throughout. Serve does not close l
// when Accept fails, but Shutdown and Close do.
func (s *Server) Serve(l net.Listener) error {
	s.init()
	if !s.trackListener(&l, true) {
		return ErrServerClosed
	}
	defer s.trackListener(&l, false)

	var delay time.Duration
	for {
		rwc, err := l.Accept()
		if err != nil {
			if s.shuttingDown() {
				return ErrServerClosed
			}
			var te interface{ Temporary() bool }
			if errors.As(err, &te) && te.Temporary() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				evicted := false
				if errors.Is(err, syscall.EMFILE) || errors.Is(err, syscall.ENFILE) {
					evicted = s.evictOne()
				}
				s.logger().Warn("fcgi: accept error, retrying", "err", err, "delay", delay, "closed_waiting_conn", evicted)
				t := time.NewTimer(delay)
				select {
				case <-t.C:
				case <-s.done:
					t.Stop()
					return ErrServerClosed
				}
				continue
			}
			return err
		}
		delay = 0
		if !s.makeRoom() {
			rwc.Close()
			continue
		}
		if c := s.newConn(rwc); c != nil {
			go c.serve()
		}
	}
}

// makeRoom reports whether a new connection may be served under
// ConnLimit, closing a waiting connection to make room if needed.
func (s *Server) makeRoom() bool {
	if s.ConnLimit <= 0 {
		return true
	}
	s.mu.Lock()
	open := len(s.conns) - s.evicted
	s.mu.Unlock()
	if open < s.ConnLimit || s.evictOne() {
		return true
	}
	s.mu.Lock()
	now := time.Now()
	quiet := now.Sub(s.refusedAt) < time.Second
	if !quiet {
		s.refusedAt = now
	}
	s.mu.Unlock()
	if !quiet { // at most one line a second under a flood
		s.logger().Warn("fcgi: connection limit reached and every connection has a running request; closing new connections", "limit", s.ConnLimit)
	}
	return false
}

// evictOne closes the connection that has waited longest without a
// running handler. It reports whether there was one.
func (s *Server) evictOne() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	for range 3 { // the chosen one may start a handler meanwhile
		var victim *conn
		var since time.Time
		for c := range s.conns {
			if t, ok := c.waitingSince(); ok && (victim == nil || t.Before(since)) {
				victim, since = c, t
			}
		}
		if victim == nil {
			return false
		}
		if victim.closeIfWaiting(since) {
			victim.evicted = true
			s.evicted++
			s.logger().Debug("fcgi: closed a waiting connection to make room", "remote", victim.remote, "waiting", time.Since(since).Round(time.Millisecond))
			return true
		}
	}
	return false
}

// ServeConn serves one connection until it is closed, then returns; by then
// its handler has returned too. ServeConn closes c.
func (s *Server) ServeConn(c net.Conn) {
	s.init()
	if cc := s.newConn(c); cc != nil {
		cc.serve()
	}
}

// Shutdown stops the server gracefully: it closes the listeners and idle
// connections, lets active requests finish (closing their connections
// afterwards) and waits until all connections are closed and all Serve
// calls returned. If ctx ends first, Shutdown calls Close and returns
// ctx.Err(). Handlers should watch their request context.
func (s *Server) Shutdown(ctx context.Context) error {
	s.startShutdown()
	s.mu.Lock()
	err := s.closeListenersLocked()
	conns := s.connsLocked()
	s.mu.Unlock()
	for _, c := range conns {
		c.closeIfIdle()
	}
	for {
		s.mu.Lock()
		if len(s.conns) == 0 && len(s.listeners) == 0 {
			s.mu.Unlock()
			return err
		}
		if s.changed == nil {
			s.changed = make(chan struct{})
		}
		ch := s.changed
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			s.Close()
			return ctx.Err()
		}
	}
}

// Close closes the listeners and all connections immediately and cancels
// every request context with cause ErrServerClosed. It does not wait for
// handlers to return; use Shutdown for that.
func (s *Server) Close() error {
	s.startShutdown()
	s.baseCancel(ErrServerClosed)
	s.mu.Lock()
	err := s.closeListenersLocked()
	conns := s.connsLocked()
	s.mu.Unlock()
	for _, c := range conns {
		c.closeNow()
	}
	return err
}

func (s *Server) closeListenersLocked() error {
	var err error
	for l, closed := range s.listeners {
		if closed {
			continue
		}
		s.listeners[l] = true
		if cerr := (*l).Close(); cerr != nil && err == nil {
			err = cerr
		}
	}
	return err
}

func (s *Server) connsLocked() []*conn {
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	return conns
}

// trackListener adds or removes a listener; adding fails after shutdown.
func (s *Server) trackListener(l *net.Listener, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.shuttingDown() {
			return false
		}
		if s.listeners == nil {
			s.listeners = make(map[*net.Listener]bool)
		}
		s.listeners[l] = false
		return true
	}
	delete(s.listeners, l)
	s.notifyLocked()
	return true
}

// trackConn adds or removes a connection; adding fails after shutdown.
func (s *Server) trackConn(c *conn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.shuttingDown() {
			return false
		}
		if s.conns == nil {
			s.conns = make(map[*conn]struct{})
		}
		s.conns[c] = struct{}{}
		return true
	}
	delete(s.conns, c)
	if c.evicted {
		s.evicted--
	}
	s.notifyLocked()
	return true
}

func (s *Server) notifyLocked() {
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}
