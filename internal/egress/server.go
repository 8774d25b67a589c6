// Package egress is the only way guest code reaches the network: the
// manager's outbound HTTP proxy for WAGI's wasi_experimental_http. A child
// (whose seccomp filter allows only AF_UNIX sockets) sends each guest
// request over an abstract unix socket; this package checks it against
// the module's allowed_hosts and limits, resolves the host once, connects
// to an address it checked, follows redirects only to allowed places, and
// streams a bounded answer back. Every call, allowed or not, is one log
// line with the request id.
//
// As with the MFS proxy (internal/mfsproxy), a child gets nothing but the
// socket's address and a per-request token: the manager registers a grant
// (Grant: request id, module, the child's pid, allowed_hosts, limits, the
// request's deadline) before it hands a request to a child and revokes it
// when the request ends (Revoke), which also cancels calls in flight.
// The proxy checks that a call comes from the grant's pid (SO_PEERCRED).
// See RATIONALE.md for why the proxy lives in the manager and what it
// costs.
package egress

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/internal/peerlisten"
)

// Bounds of the proxy itself.
const (
	// MaxConns bounds the proxy's open connections, all children
	// together, and MaxConnsPerPID those of one process.
	MaxConns       = 256
	MaxConnsPerPID = 16
	// MaxRedirects is how many redirects one call follows.
	MaxRedirects = 3
	// headerTimeout bounds how long a child may take to send a request's
	// header.
	headerTimeout = 10 * time.Second
	// maxLoggedRefusals bounds the lines logged per grant beyond its
	// http_max_requests (and for calls without a grant, per proxy).
	maxLoggedRefusals = 20
)

// Limits are a module's outbound HTTP limits.
type Limits struct {
	// MaxRequests bounds the outbound requests of one guest request,
	// allowed or refused (→ TooManySessions).
	MaxRequests int
	// MaxConcurrency is WAGI's http_max_concurrency: the response
	// handles a guest may hold open at once, and the calls in flight
	// (→ TooManySessions).
	MaxConcurrency int
	// MaxResponse bounds a response body in bytes (→ RequestError).
	MaxResponse int64
	// Timeout bounds one call (→ RequestError); no call outlives the
	// grant's Deadline either way.
	Timeout time.Duration
}

// DefaultMaxConcurrency is http_max_concurrency when a module does not
// set it (WAGI had no bound).
const DefaultMaxConcurrency = 4

// Grant is what one guest request may do.
type Grant struct {
	ID           string // request id, for the log
	Module       string // module reference, for the log
	PID          int    // the child running the request
	AllowedHosts []string
	Limits       Limits
	Deadline     time.Time // the request's wall-clock limit
}

// Server is the manager's outbound HTTP proxy. See Start.
type Server struct {
	addr string
	log  *slog.Logger
	ln   net.Listener
	done chan struct{}

	mu       sync.Mutex
	closed   bool
	grants   map[string]*grant
	conns    map[*peerlisten.Conn]struct{} // open calls, closed by Close
	handlers sync.WaitGroup

	refusals refusalLog // lines for calls without a grant

	// resolve looks up a host's addresses; tests replace it.
	resolve func(ctx context.Context, host string) ([]netip.Addr, error)
}

type grant struct {
	Grant
	ctx    context.Context // cancelled at Revoke
	cancel context.CancelFunc

	requests atomic.Int64
	inflight atomic.Int32
	unlogged atomic.Int64

	// The policy and the client are made at the first call: requests
	// that make none cost a map entry and a token.
	mu     sync.Mutex
	policy *Policy
	perr   error
	client *http.Client
	tr     *http.Transport
}

// Start listens on a fresh abstract unix socket and serves until Close.
func Start(log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	// Abstract, like the MFS proxy's: nothing in the file system; who
	// may use it is decided per call (token and peer pid).
	name := "@wagi-fcgi-egress-" + hex.EncodeToString(rnd[:])
	ln, err := net.Listen("unix", name)
	if err != nil {
		return nil, fmt.Errorf("egress: listen on %s: %w", name, err)
	}
	s := &Server{
		addr:     "unix:" + name,
		log:      log,
		ln:       peerlisten.New(ln, MaxConns, MaxConnsPerPID),
		done:     make(chan struct{}),
		grants:   map[string]*grant{},
		conns:    map[*peerlisten.Conn]struct{}{},
		refusals: refusalLog{window: time.Minute},
		resolve: func(ctx context.Context, host string) ([]netip.Addr, error) {
			return net.DefaultResolver.LookupNetIP(ctx, "ip", host)
		},
	}
	go s.serve()
	log.Info("outbound HTTP proxy listening", "addr", s.addr)
	return s, nil
}

// Addr is the address children are given ("unix:@name").
func (s *Server) Addr() string { return s.addr }

// Grant registers g until Revoke and returns the token the child sends.
func (s *Server) Grant(g Grant) string {
	var rnd [tokenLen / 2]byte
	_, _ = rand.Read(rnd[:])
	token := hex.EncodeToString(rnd[:])
	gr := &grant{Grant: g}
	if g.Deadline.IsZero() {
		gr.ctx, gr.cancel = context.WithCancel(context.Background())
		gr.Deadline = time.Now().Add(24 * time.Hour)
	} else {
		gr.ctx, gr.cancel = context.WithDeadline(context.Background(), g.Deadline)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		gr.cancel()
		return token // never registered
	}
	s.grants[token] = gr
	return token
}

// Revoke ends a grant: later calls with its token are refused, calls in
// flight are cancelled. Unknown tokens are ignored.
func (s *Server) Revoke(token string) {
	s.mu.Lock()
	g := s.grants[token]
	delete(s.grants, token)
	s.mu.Unlock()
	if g == nil {
		return
	}
	g.cancel()
	g.closeIdle()
	if n := g.unlogged.Load(); n > 0 {
		s.log.Warn("outbound HTTP: more calls refused than logged", "id", g.ID, "module", g.Module, "unlogged", n)
	}
}

// Close stops the proxy and waits for every call to end.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	grants := s.grants
	s.grants = map[string]*grant{}
	s.mu.Unlock()
	err := s.ln.Close()
	for _, g := range grants {
		g.cancel()
	}
	s.mu.Lock()
	for c := range s.conns {
		c.Close()
	}
	s.mu.Unlock()
	<-s.done
	s.handlers.Wait()
	return err
}

func (s *Server) serve() {
	defer close(s.done)
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return
			}
			s.log.Warn("outbound HTTP proxy: accept", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			c.Close()
			continue
		}
		pc := c.(*peerlisten.Conn)
		s.handlers.Add(1)
		s.conns[pc] = struct{}{}
		s.mu.Unlock()
		go func() {
			defer s.handlers.Done()
			s.handle(pc)
			s.mu.Lock()
			delete(s.conns, pc)
			s.mu.Unlock()
		}()
	}
}

// call is one outbound request as it is logged.
type call struct {
	g        *grant
	pid      int
	method   string
	url      string // without query and fragment
	query    bool
	status   int
	sent     int64 // request body bytes
	received int64 // response body bytes
	code     uint32
	reason   string
	hops     int
	started  bool // the response header went to the child
}

func (s *Server) handle(c *peerlisten.Conn) {
	defer c.Close()
	start := time.Now()
	_ = c.SetReadDeadline(start.Add(headerTimeout))
	br := bufio.NewReaderSize(c, 4<<10)
	var req Request
	bodyLen, err := readRequestHeader(br, &req)
	if err != nil {
		// Not a call: nothing to answer.
		if s.logNoGrant() {
			s.log.Warn("outbound HTTP proxy: malformed call", "pid", c.PID, "err", err)
		}
		return
	}
	cl := &call{pid: c.PID, method: req.Method}
	cl.url, cl.query = redact(req.URL)
	s.mu.Lock()
	cl.g = s.grants[req.Token]
	s.mu.Unlock()
	s.do(c, br, &req, bodyLen, cl)
	s.logCall(cl, time.Since(start))
	if cl.code != CodeOK {
		_ = c.SetWriteDeadline(time.Now().Add(time.Second))
		if cl.started {
			// The body was cut short: end it with the reason.
			_, _ = c.Write(binary.BigEndian.AppendUint32(nil, 0))
		}
		_ = writeError(c, cl.code, cl.reason)
	}
}

func (cl *call) refuse(code uint32, reason string) {
	cl.code, cl.reason = code, reason
}

// do checks and makes one call, answering a success itself; a refusal or
// failure is left in cl for handle to answer.
func (s *Server) do(c *peerlisten.Conn, br *bufio.Reader, req *Request, bodyLen uint64, cl *call) {
	g := cl.g
	if g == nil {
		cl.refuse(CodeRuntimeError, "no grant (missing, unknown or revoked token)")
		return
	}
	if c.PID != g.PID {
		cl.refuse(CodeRuntimeError, fmt.Sprintf("the grant belongs to pid %d, the caller is pid %d", g.PID, c.PID))
		return
	}
	lim := g.Limits
	if n := g.requests.Add(1); n > int64(lim.MaxRequests) {
		cl.refuse(CodeTooManySessions, fmt.Sprintf("more than %d outbound requests in one request (http_max_requests)", lim.MaxRequests))
		return
	}
	if int(req.Open) >= lim.MaxConcurrency {
		cl.refuse(CodeTooManySessions, fmt.Sprintf("%d responses open, at most %d (http_max_concurrency)", req.Open, lim.MaxConcurrency))
		return
	}
	if int(g.inflight.Add(1)) > lim.MaxConcurrency {
		g.inflight.Add(-1)
		cl.refuse(CodeTooManySessions, fmt.Sprintf("more than %d calls in flight (http_max_concurrency)", lim.MaxConcurrency))
		return
	}
	defer g.inflight.Add(-1)
	u, target, err := ParseTarget(req.URL)
	if err != nil {
		cl.refuse(CodeInvalidURL, err.Error())
		return
	}
	policy, client, err := s.prepare(g)
	if err != nil {
		cl.refuse(CodeDestinationNotAllowed, err.Error())
		return
	}
	// A connection this call leaves idle after its grant was revoked
	// is closed, not kept.
	defer func() {
		if g.ctx.Err() != nil {
			g.closeIdle()
		}
	}()
	if ok, why := policy.Allows(target); !ok {
		cl.refuse(CodeDestinationNotAllowed, why)
		return
	}
	if !validMethod(req.Method) {
		cl.refuse(CodeInvalidMethod, "method "+strconv.Quote(req.Method))
		return
	}
	hdr, err := parseHeaders(req.Headers)
	if err != nil {
		cl.refuse(CodeInvalidEncoding, err.Error())
		return
	}
	if bodyLen > MaxRequestBody {
		cl.refuse(CodeRequestError, fmt.Sprintf("request body of %d bytes, over %d", bodyLen, MaxRequestBody))
		return
	}
	deadline := g.Deadline
	if lim.Timeout > 0 {
		if d := time.Now().Add(lim.Timeout); d.Before(deadline) {
			deadline = d
		}
	}
	ctx, cancel := context.WithDeadline(g.ctx, deadline)
	defer cancel()
	if ctx.Err() != nil {
		cl.refuse(CodeRequestError, "the request's time is up")
		return
	}
	_ = c.SetDeadline(deadline.Add(time.Second))

	var body io.Reader = http.NoBody
	if bodyLen > 0 {
		body = io.LimitReader(br, int64(bodyLen))
	}
	hreq, err := http.NewRequestWithContext(ctx, req.Method, u.String(), body)
	if err != nil {
		cl.refuse(CodeInvalidURL, err.Error())
		return
	}
	hreq.ContentLength = int64(bodyLen)
	hreq.Header = hdr
	cl.sent = int64(bodyLen)
	ctx = context.WithValue(ctx, hopsKey{}, &cl.hops)
	resp, err := client.Do(hreq.WithContext(ctx))
	if err != nil {
		var d *deniedError
		switch {
		case errors.As(err, &d):
			cl.refuse(CodeDestinationNotAllowed, d.why)
		case g.ctx.Err() != nil && !errors.Is(g.ctx.Err(), context.DeadlineExceeded):
			cl.refuse(CodeRequestError, "cancelled: the request ended")
		case ctx.Err() != nil:
			cl.refuse(CodeRequestError, "timed out (http_timeout or the request's timeout)")
		default:
			cl.refuse(CodeRequestError, unwrapURLError(err))
		}
		return
	}
	defer resp.Body.Close()
	// The transport stops watching ctx once it hands a connection over
	// (a 101 Switching Protocols answer, which an upstream may send
	// unasked): closing the body at ctx's end is what cuts such a call,
	// and its upstream connection, at the deadline or at Revoke.
	stop := context.AfterFunc(ctx, func() { resp.Body.Close() })
	defer stop()
	cl.status = resp.StatusCode
	if resp.ContentLength > lim.MaxResponse {
		cl.refuse(CodeRequestError, fmt.Sprintf("response of %d bytes, over http_max_response (%d)", resp.ContentLength, lim.MaxResponse))
		return
	}
	hs := encodeHeaders(resp.Header)
	if len(hs) > maxResponseHeader {
		cl.refuse(CodeRequestError, "response headers too large")
		return
	}
	bufs := chunkPool.Get().(*[]byte)
	defer chunkPool.Put(bufs)
	bw := bufio.NewWriterSize(c, 4<<10)
	if err := writeResponseHeader(bw, uint16(resp.StatusCode), hs); err != nil {
		cl.refuse(CodeRequestError, "child: "+err.Error())
		return
	}
	cl.started = true
	buf := *bufs
	for {
		n, rerr := io.ReadFull(resp.Body, buf)
		if n > 0 {
			if cl.received+int64(n) > lim.MaxResponse {
				_ = bw.Flush()
				cl.refuse(CodeRequestError, fmt.Sprintf("response body over http_max_response (%d bytes)", lim.MaxResponse))
				return
			}
			cl.received += int64(n)
			var h [4]byte
			binary.BigEndian.PutUint32(h[:], uint32(n))
			_, _ = bw.Write(h[:])
			if _, err := bw.Write(buf[:n]); err != nil {
				cl.refuse(CodeRequestError, "child: "+err.Error())
				return
			}
		}
		if rerr == io.EOF || rerr == io.ErrUnexpectedEOF {
			break
		}
		if rerr != nil {
			_ = bw.Flush()
			if ctx.Err() != nil {
				cl.refuse(CodeRequestError, "timed out reading the response body")
			} else {
				cl.refuse(CodeRequestError, "reading the response body: "+rerr.Error())
			}
			return
		}
	}
	_, _ = bw.Write([]byte{0, 0, 0, 0, 0}) // the empty chunk, and code 0
	_ = bw.Flush()
}

// chunkPool holds the buffers response bodies are copied through: a
// call allocates next to nothing of its own.
var chunkPool = sync.Pool{New: func() any { b := make([]byte, chunkSize); return &b }}

type hopsKey struct{}

// deniedError is a connection or redirect the policy refused.
type deniedError struct{ why string }

func (e *deniedError) Error() string { return e.why }

// prepare parses g's policy and makes its client, once.
func (s *Server) prepare(g *grant) (*Policy, *http.Client, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.policy == nil && g.perr == nil {
		if g.policy, g.perr = ParsePolicy(g.AllowedHosts); g.perr == nil {
			g.client = s.newClient(g)
		}
	}
	return g.policy, g.client, g.perr
}

func (g *grant) closeIdle() {
	g.mu.Lock()
	tr := g.tr
	g.mu.Unlock()
	if tr != nil {
		tr.CloseIdleConnections()
	}
}

func (s *Server) newClient(g *grant) *http.Client {
	// A transport per grant: its pooled connections were dialled after
	// this grant's checks, and no other grant (with another policy) can
	// reuse them.
	g.tr = &http.Transport{
		Proxy:                  nil, // never HTTP_PROXY: the proxy is this
		DialContext:            func(ctx context.Context, network, addr string) (net.Conn, error) { return s.dial(ctx, g, addr) },
		MaxIdleConns:           4,
		IdleConnTimeout:        30 * time.Second,
		TLSHandshakeTimeout:    10 * time.Second,
		MaxResponseHeaderBytes: maxResponseHeader,
		DisableCompression:     true, // the guest gets the bytes the server sent, as under WAGI
	}
	return &http.Client{
		Transport: g.tr,
		CheckRedirect: func(r *http.Request, via []*http.Request) error {
			if hops, ok := r.Context().Value(hopsKey{}).(*int); ok {
				*hops = len(via)
			}
			if len(via) > MaxRedirects {
				return fmt.Errorf("more than %d redirects", MaxRedirects)
			}
			t, err := TargetOf(r.URL)
			if err != nil {
				return &deniedError{"redirect to an invalid URL: " + err.Error()}
			}
			if ok, why := g.policy.Allows(t); !ok {
				u, _ := redact(r.URL.String())
				return &deniedError{"redirect to " + u + ": " + why}
			}
			return nil
		},
	}
}

// dial resolves addr's host once and connects to an address the policy
// allows: the address connected to is the address checked.
func (s *Server) dial(ctx context.Context, g *grant, addr string) (net.Conn, error) {
	host, portS, err := net.SplitHostPort(addr)
	if err != nil {
		return nil, err
	}
	port, err := strconv.ParseUint(portS, 10, 16)
	if err != nil {
		return nil, fmt.Errorf("port %q", portS)
	}
	var addrs []netip.Addr
	if ip, err := netip.ParseAddr(host); err == nil {
		addrs = []netip.Addr{ip}
	} else if addrs, err = s.resolve(ctx, host); err != nil {
		return nil, fmt.Errorf("resolve %s: %w", host, err)
	}
	ok, why := g.policy.CheckAddrs(host, uint16(port), addrs)
	if len(ok) == 0 {
		return nil, &deniedError{why}
	}
	var d net.Dialer
	var lastErr error
	for _, a := range ok {
		c, err := d.DialContext(ctx, "tcp", netip.AddrPortFrom(a, uint16(port)).String())
		if err == nil {
			return c, nil
		}
		lastErr = err
	}
	return nil, lastErr
}

func unwrapURLError(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		err = ue.Err
	}
	return err.Error()
}

// logCall logs one call. Past the grant's http_max_requests (and for
// calls without a grant) the lines are bounded: a guest looping on
// refused calls cannot flood the log.
func (s *Server) logCall(cl *call, d time.Duration) {
	id, module := "", ""
	if cl.g != nil {
		id, module = cl.g.ID, cl.g.Module
		if n := cl.g.requests.Load(); n > int64(cl.g.Limits.MaxRequests)+maxLoggedRefusals {
			cl.g.unlogged.Add(1)
			return
		}
	} else if !s.logNoGrant() {
		return
	}
	attrs := []any{"id", id, "module", module, "pid", cl.pid, "method", cl.method, "url", cl.url}
	if cl.query {
		attrs = append(attrs, "query", "omitted")
	}
	if cl.status != 0 {
		attrs = append(attrs, "status", cl.status)
	}
	if cl.hops > 0 {
		attrs = append(attrs, "redirects", cl.hops)
	}
	attrs = append(attrs, "sent", cl.sent, "received", cl.received, "duration", d.Round(time.Microsecond).String())
	if cl.code != CodeOK {
		attrs = append(attrs, "error", cl.code, "reason", cl.reason)
		s.log.Warn("outbound HTTP refused", attrs...)
		return
	}
	s.log.Info("outbound HTTP", attrs...)
}

// refusalLog bounds the lines logged for calls without a grant (unknown
// or revoked tokens, frames that do not parse) to maxLoggedRefusals a
// window, and counts the rest. Per window, not for the proxy's life: a
// flood (or calls racing Revoke over months) must not leave later
// attempts unlogged.
type refusalLog struct {
	window time.Duration

	mu       sync.Mutex
	start    time.Time
	n        int
	unlogged int64
}

// allow reports whether one more refusal is logged, and how many were
// left out in the windows before it (to be logged once, now).
func (r *refusalLog) allow(now time.Time) (bool, int64) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var left int64
	if now.Sub(r.start) >= r.window {
		left, r.unlogged = r.unlogged, 0
		r.start, r.n = now, 0
	}
	if r.n++; r.n > maxLoggedRefusals {
		r.unlogged++
		return false, left
	}
	return true, left
}

// logNoGrant reports whether to log a call without a grant, logging
// first how many such calls earlier windows left out.
func (s *Server) logNoGrant() bool {
	ok, left := s.refusals.allow(time.Now())
	if left > 0 {
		s.log.Warn("outbound HTTP proxy: more calls without a grant refused than logged", "unlogged", left)
	}
	return ok
}
