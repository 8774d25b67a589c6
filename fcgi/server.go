package fcgi

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

const (
	defaultMaxParamsBytes = 1 << 20
	defaultMaxBodyBuffer  = 64 << 20
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

	// MaxBodyBuffer caps the request body bytes received but not yet read
	// by the handler; 0 means 64 MiB. While more is buffered, the server
	// stops reading the connection until the handler reads, so during that
	// time it does not notice ABORT_REQUEST or EOF. Below the cap the
	// connection is read continuously, whatever the handler does.
	MaxBodyBuffer int

	// IdleTimeout closes a connection that has no request for this long:
	// before its first request and between requests on a kept connection.
	// It never applies while a request is active. 0 means no timeout.
	IdleTimeout time.Duration

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
	changed   chan struct{} // closed when a listener or conn goes away

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
// backs off, from 5 ms doubling to 1 s, and retries. Serve does not close
// l when Accept fails, but Shutdown and Close do.
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
				s.logger().Warn("fcgi: accept error, retrying", "err", err, "delay", delay)
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
		if c := s.newConn(rwc); c != nil {
			go c.serve()
		}
	}
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
	s.notifyLocked()
	return true
}

func (s *Server) notifyLocked() {
	if s.changed != nil {
		close(s.changed)
		s.changed = nil
	}
}
