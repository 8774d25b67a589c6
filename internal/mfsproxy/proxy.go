// Package mfsproxy is the only way children reach the kubo RPC API: a small
// HTTP server of the manager, on an abstract unix socket, that forwards to
// kubo the few files/* calls an MFS volume makes (ipfs/mfs.go,
// ipfs/mfsquota.go), and only for paths under the MFS roots of the volumes
// mounted for the request the calling child is running right now.
//
// A child gets no kubo address. The manager registers a grant before it
// hands a request to a child (Grant: the request id, the child's pid, the
// volumes' roots) and revokes it when the request ends or the child dies
// (Revoke). The child sends the grant's token in the GrantHeader of every
// call; the proxy also checks that the connection comes from the child's
// pid (SO_PEERCRED), so a token is worth nothing to any other process.
// Anything else (another command, another option, a path outside the roots
// or not clean, a body where none belongs, no or a stale grant) is refused
// with 403 and logged with the request id.
package mfsproxy

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"path"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/internal/peerlisten"
	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// Bounds of the proxy. A legitimate child makes one call at a time (a
// guest is one thread and every FS operation waits for its call).
const (
	// MaxInflight is how many calls one grant may have in flight; past it
	// the proxy answers 429.
	MaxInflight = 4
	// MaxConns bounds the proxy's open connections, all children together,
	// and MaxConnsPerPID those of one process, so that one child cannot
	// take them all (a connection without a call ends after 10 s anyway).
	MaxConns       = 256
	MaxConnsPerPID = 16
	// maxCIDs bounds the CIDs a grant remembers (see grant.cids).
	maxCIDs = 1024
	// maxStatBody bounds a files/stat answer the proxy reads to learn its
	// CID.
	maxStatBody = 64 << 10
	// writeSlack is what a files/write body may have beyond the file: the
	// multipart framing (a few hundred bytes).
	writeSlack = 64 << 10
	// maxLoggedRefusals bounds the refusals logged per grant (and for
	// calls without one, per proxy): a hostile child cannot flood the log.
	maxLoggedRefusals = 20
)

// Root is a volume's MFS directory, as granted to one request.
type Root struct {
	Path       string // clean absolute MFS path
	QuotaBytes int64  // the volume's byte quota, 0 = none: bounds a files/write body
}

// argKind says what a positional argument of a command must be.
type argKind uint8

const (
	argPath   argKind = iota // a path under a root
	argMode                  // an octal mode (files/chmod)
	argSource                // a path under a root, or /ipfs/<CID the grant saw under its roots> (files/cp)
)

// rule is what the proxy lets through for one command.
type rule struct {
	args    []argKind
	opts    map[string]optKind
	body    bool // a files/write body
	notRoot bool // may not name a root itself (rm, mv: the volume would go)
}

type optKind uint8

const (
	optBool optKind = iota
	optUint
)

// rules are exactly the calls of ipfs/mfs.go and ipfs/mfsquota.go, with
// exactly the options they set.
var rules = map[string]rule{
	"files/stat":  {args: []argKind{argPath}},
	"files/ls":    {args: []argKind{argPath}, opts: map[string]optKind{"long": optBool, "U": optBool}},
	"files/read":  {args: []argKind{argPath}, opts: map[string]optKind{"offset": optUint, "count": optUint}},
	"files/write": {args: []argKind{argPath}, opts: map[string]optKind{"create": optBool, "truncate": optBool, "parents": optBool, "flush": optBool}, body: true},
	"files/mkdir": {args: []argKind{argPath}, opts: map[string]optKind{"parents": optBool}},
	"files/chmod": {args: []argKind{argMode, argPath}},
	"files/touch": {args: []argKind{argPath}, opts: map[string]optKind{"mtime": optUint, "mtime-nsecs": optUint}},
	"files/mv":    {args: []argKind{argPath, argPath}, notRoot: true},
	"files/rm":    {args: []argKind{argPath}, opts: map[string]optKind{"recursive": optBool, "force": optBool}, notRoot: true},
	"files/cp":    {args: []argKind{argSource, argPath}},
}

// Proxy is the manager's MFS proxy. Its zero value is not usable; see
// Start.
type Proxy struct {
	addr   string
	kubo   *url.URL
	log    *slog.Logger
	ln     net.Listener
	srv    *http.Server
	rp     *httputil.ReverseProxy
	tr     *http.Transport
	served chan struct{} // closed when Serve has returned

	mu       sync.Mutex
	closed   bool
	grants   map[string]*grant
	handlers sync.WaitGroup // handlers running; Add under mu while !closed

	refusedNoGrant atomic.Int64
}

// grant is what one request's child may do.
type grant struct {
	id       string // request id, for the log
	pid      int
	roots    []Root
	ctx      context.Context // cancelled at Revoke: calls in flight end
	cancel   context.CancelFunc
	inflight atomic.Int32
	refused  atomic.Int64

	mu sync.Mutex
	// cids are the CIDs files/stat reported for paths under the roots:
	// the only /ipfs/ sources files/cp may name (a quota undo puts back
	// the version it stat'ed), so a child cannot pull arbitrary content.
	cids map[string]struct{}
}

// Start listens on a fresh abstract unix socket and serves until Close.
// kuboAPI is the node's RPC base URL (http://host:port), as ipfs.Client
// BaseURL gives it.
func Start(kuboAPI string, log *slog.Logger) (*Proxy, error) {
	if log == nil {
		log = slog.Default()
	}
	u, err := url.Parse(kuboAPI)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("mfsproxy: kubo API %q is not an http URL", kuboAPI)
	}
	var rnd [12]byte
	_, _ = rand.Read(rnd[:])
	// An abstract socket: nothing in the file system to clean up or to
	// give the children's uids access to, and no path-length limit. Who
	// may use it is decided per call (token and peer pid), not by who can
	// connect.
	name := "@wagi-fcgi-mfs-" + hex.EncodeToString(rnd[:])
	ln, err := net.Listen("unix", name)
	if err != nil {
		return nil, fmt.Errorf("mfsproxy: listen on %s: %w", name, err)
	}
	p := &Proxy{
		addr:   "unix:" + name,
		kubo:   u,
		log:    log,
		ln:     peerlisten.New(ln, MaxConns, MaxConnsPerPID),
		served: make(chan struct{}),
		grants: map[string]*grant{},
		tr: &http.Transport{
			Proxy:               nil, // the node is local; never route through HTTP_PROXY
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
			MaxIdleConns:        64,
			MaxIdleConnsPerHost: 64,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	p.rp = &httputil.ReverseProxy{
		Rewrite:        func(*httputil.ProxyRequest) {}, // the outgoing request is built in ServeHTTP
		Transport:      p.tr,
		ModifyResponse: p.modifyResponse,
		ErrorHandler:   p.forwardError,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	p.srv = &http.Server{
		Handler:           p,
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if pc, ok := c.(*peerlisten.Conn); ok {
				return context.WithValue(ctx, peerKey{}, pc.PID)
			}
			return ctx
		},
	}
	go func() {
		defer close(p.served)
		_ = p.srv.Serve(p.ln)
	}()
	log.Info("MFS proxy listening", "addr", p.addr, "kubo", kuboAPI)
	return p, nil
}

// Addr is the address children are given for MFS volumes ("unix:@name"),
// which ipfs.New accepts.
func (p *Proxy) Addr() string { return p.addr }

// Grant lets the child pid make MFS calls under roots for request id until
// Revoke, and returns the token the child must send. Roots that are not
// clean absolute paths are left out.
func (p *Proxy) Grant(id string, pid int, roots []Root) string {
	var rnd [16]byte
	_, _ = rand.Read(rnd[:])
	token := hex.EncodeToString(rnd[:])
	g := &grant{id: id, pid: pid, cids: map[string]struct{}{}}
	for _, r := range roots {
		if path.IsAbs(r.Path) && path.Clean(r.Path) == r.Path {
			g.roots = append(g.roots, r)
		}
	}
	g.ctx, g.cancel = context.WithCancel(context.Background())
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		g.cancel()
		return token // never registered: every call with it is refused
	}
	p.grants[token] = g
	return token
}

// Revoke ends a grant: later calls with its token are refused, and calls
// in flight are cancelled. Unknown tokens are ignored.
func (p *Proxy) Revoke(token string) {
	p.mu.Lock()
	g := p.grants[token]
	delete(p.grants, token)
	p.mu.Unlock()
	if g == nil {
		return
	}
	g.cancel()
	if n := g.refused.Load(); n > maxLoggedRefusals {
		p.log.Warn("MFS proxy: more calls refused than logged", "id", g.id, "refused", n)
	}
}

// Close stops the proxy: it closes the socket and every connection,
// cancels every grant, and waits for the server and every handler.
func (p *Proxy) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	grants := p.grants
	p.grants = map[string]*grant{}
	p.mu.Unlock()
	err := p.srv.Close()
	for _, g := range grants {
		g.cancel()
	}
	p.handlers.Wait()
	<-p.served
	p.tr.CloseIdleConnections()
	return err
}

type peerKey struct{}
type grantKey struct{}

// ServeHTTP checks one call and forwards it, or refuses it.
func (p *Proxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		http.Error(w, "closing", http.StatusServiceUnavailable)
		return
	}
	p.handlers.Add(1)
	g := p.grants[r.Header.Get(ipc.MFSGrantHeader)]
	p.mu.Unlock()
	defer p.handlers.Done()

	if g == nil {
		p.refuse(w, r, nil, http.StatusForbidden, "no grant (missing, unknown or revoked token)")
		return
	}
	if pid, _ := r.Context().Value(peerKey{}).(int); pid != g.pid {
		p.refuse(w, r, g, http.StatusForbidden, fmt.Sprintf("the grant belongs to pid %d, the caller is pid %d", g.pid, pid))
		return
	}
	target, limit, reason := g.check(r)
	if reason != "" {
		p.refuse(w, r, g, http.StatusForbidden, reason)
		return
	}
	if g.inflight.Add(1) > MaxInflight {
		g.inflight.Add(-1)
		p.refuse(w, r, g, http.StatusTooManyRequests, fmt.Sprintf("more than %d calls in flight", MaxInflight))
		return
	}
	defer g.inflight.Add(-1)
	if limit > 0 {
		if r.ContentLength > limit {
			p.refuse(w, r, g, http.StatusRequestEntityTooLarge, fmt.Sprintf("body of %d bytes, over %d", r.ContentLength, limit))
			return
		}
		r.Body = http.MaxBytesReader(w, r.Body, limit)
	}

	// The call ends with the grant (Revoke) as well as with the child's
	// connection.
	ctx, cancel := context.WithCancel(context.WithValue(r.Context(), grantKey{}, g))
	defer cancel()
	stop := context.AfterFunc(g.ctx, cancel)
	defer stop()

	target.Scheme, target.Host = p.kubo.Scheme, p.kubo.Host
	out := r.Clone(ctx)
	out.URL = target
	out.Host = target.Host
	out.RequestURI = ""
	// Only what kubo needs: not the token, nor anything kubo might act on
	// (Origin, Referer, Authorization...).
	ct := r.Header.Get("Content-Type")
	out.Header = http.Header{}
	if limit > 0 && ct != "" {
		out.Header.Set("Content-Type", ct)
	}
	p.rp.ServeHTTP(w, out)
}

// check validates a call against the grant. It returns the URL to forward
// to (built from the validated values only, so kubo sees exactly what was
// checked) and the body limit (0: no body allowed), or why it is refused.
func (g *grant) check(r *http.Request) (target *url.URL, bodyLimit int64, reason string) {
	if r.Method != http.MethodPost {
		return nil, 0, "method " + r.Method
	}
	cmd, ok := strings.CutPrefix(r.URL.Path, "/api/v0/")
	if !ok {
		return nil, 0, "not an RPC call"
	}
	ru, ok := rules[cmd]
	if !ok {
		return nil, 0, "command " + strconv.Quote(cmd) + " is not an MFS volume call"
	}
	q, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return nil, 0, "bad query: " + err.Error()
	}
	for k, vs := range q {
		if k == "arg" {
			continue
		}
		if len(vs) != 1 {
			return nil, 0, "option " + strconv.Quote(k) + " repeated"
		}
		v := vs[0]
		switch k {
		case "encoding":
			if v != "json" {
				return nil, 0, "encoding " + strconv.Quote(v)
			}
			continue
		case "stream-channels":
			if v != "true" && v != "false" {
				return nil, 0, "stream-channels " + strconv.Quote(v)
			}
			continue
		}
		kind, ok := ru.opts[k]
		if !ok {
			return nil, 0, "option " + strconv.Quote(k) + " is not allowed for " + cmd
		}
		switch kind {
		case optBool:
			if v != "true" && v != "false" {
				return nil, 0, "option " + k + " is not a bool"
			}
		case optUint:
			if _, err := strconv.ParseUint(v, 10, 63); err != nil {
				return nil, 0, "option " + k + " is not a count"
			}
		}
	}
	args := q["arg"]
	if len(args) != len(ru.args) {
		return nil, 0, fmt.Sprintf("%s takes %d arguments, got %d", cmd, len(ru.args), len(args))
	}
	var under *Root
	for i, kind := range ru.args {
		a := args[i]
		switch kind {
		case argMode:
			if len(a) < 1 || len(a) > 5 || strings.Trim(a, "01234567") != "" {
				return nil, 0, "mode " + strconv.Quote(a) + " is not octal"
			}
			continue
		case argSource:
			if cid, ok := strings.CutPrefix(a, "/ipfs/"); ok {
				if !g.sawCID(cid) {
					return nil, 0, "source " + strconv.Quote(a) + " is not a version this request saw under its volumes"
				}
				continue
			}
		}
		root, why := g.root(a)
		if why != "" {
			return nil, 0, why
		}
		if ru.notRoot && a == root.Path {
			return nil, 0, cmd + " of the volume's root " + strconv.Quote(a)
		}
		under = root
	}
	if ru.body {
		bodyLimit = ipfs.DefaultMFSMaxFileSize
		if under.QuotaBytes > 0 {
			bodyLimit = min(bodyLimit, under.QuotaBytes)
		}
		bodyLimit += writeSlack
	} else if r.ContentLength != 0 {
		return nil, 0, cmd + " with a body"
	}
	return &url.URL{Path: "/api/v0/" + cmd, RawQuery: q.Encode()}, bodyLimit, ""
}

// root returns the root p is under (or is), or why p is refused.
func (g *grant) root(p string) (*Root, string) {
	switch {
	case p == "" || !path.IsAbs(p):
		return nil, "path " + strconv.Quote(p) + " is not absolute"
	case path.Clean(p) != p || strings.IndexByte(p, 0) >= 0:
		return nil, "path " + strconv.Quote(p) + " is not clean"
	case p == "/ipfs" || p == "/ipns" || strings.HasPrefix(p, "/ipfs/") || strings.HasPrefix(p, "/ipns/"):
		return nil, "path " + strconv.Quote(p) + " is not in MFS"
	}
	for i := range g.roots {
		r := &g.roots[i]
		if p == r.Path || r.Path == "/" || strings.HasPrefix(p, r.Path+"/") {
			return r, ""
		}
	}
	return nil, "path " + strconv.Quote(p) + " is outside the request's volumes"
}

func (g *grant) sawCID(cid string) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	_, ok := g.cids[cid]
	return ok
}

// modifyResponse learns the CID of every files/stat answer (see
// grant.cids).
func (p *Proxy) modifyResponse(resp *http.Response) error {
	g, _ := resp.Request.Context().Value(grantKey{}).(*grant)
	if g == nil || resp.StatusCode != http.StatusOK || resp.Request.URL.Path != "/api/v0/files/stat" {
		return nil
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxStatBody+1))
	resp.Body.Close()
	if err != nil {
		return err
	}
	if len(b) > maxStatBody {
		return errors.New("mfsproxy: files/stat answer too large")
	}
	var st struct{ Hash string }
	if json.Unmarshal(b, &st) == nil && st.Hash != "" {
		g.mu.Lock()
		if len(g.cids) < maxCIDs {
			g.cids[st.Hash] = struct{}{}
		}
		g.mu.Unlock()
	}
	resp.Body = io.NopCloser(bytes.NewReader(b))
	resp.ContentLength = int64(len(b))
	resp.Header.Set("Content-Length", strconv.Itoa(len(b)))
	resp.Header.Del("Transfer-Encoding")
	return nil
}

// forwardError answers a call kubo could not be asked: 502, as a kubo
// error the child's client reads.
func (p *Proxy) forwardError(w http.ResponseWriter, r *http.Request, err error) {
	g, _ := r.Context().Value(grantKey{}).(*grant)
	var mbe *http.MaxBytesError
	switch {
	case errors.As(err, &mbe):
		p.refuse(w, r, g, http.StatusRequestEntityTooLarge, fmt.Sprintf("body over %d bytes", mbe.Limit))
		return
	case g != nil && g.ctx.Err() != nil:
		// Revoked while in flight: the request is over.
	case r.Context().Err() == nil:
		id := ""
		if g != nil {
			id = g.id
		}
		p.log.Warn("MFS proxy: kubo call failed", "id", id, "call", r.URL.Path, "err", err)
	}
	writeError(w, http.StatusBadGateway, "kubo: "+err.Error())
}

// refuse answers a refused call and logs it (a bounded number of times).
func (p *Proxy) refuse(w http.ResponseWriter, r *http.Request, g *grant, status int, reason string) {
	var n int64
	id := ""
	if g != nil {
		n = g.refused.Add(1)
		id = g.id
	} else {
		n = p.refusedNoGrant.Add(1)
	}
	if n <= maxLoggedRefusals {
		pid, _ := r.Context().Value(peerKey{}).(int)
		p.log.Warn("MFS proxy refused a call", "id", id, "pid", pid, "status", status, "call", r.URL.Path, "reason", reason)
	}
	writeError(w, status, "wagi-fcgi MFS proxy: "+reason)
}

// writeError answers as kubo does, so the child's RPC client reports the
// message.
func writeError(w http.ResponseWriter, status int, msg string) {
	b, _ := json.Marshal(struct {
		Message string
		Code    int
		Type    string
	}{msg, 0, "error"})
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// RootsOf is what a run's MFS mounts grant: their directories and quotas.
func RootsOf(mounts []ipc.Mount) []Root {
	var roots []Root
	for _, mt := range mounts {
		if mt.Kind == ipc.MountMFS {
			roots = append(roots, Root{Path: mt.MFSPath, QuotaBytes: int64(min(mt.QuotaBytes, 1<<62))})
		}
	}
	return roots
}
