package ipfs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/ipfs/boxo/files"
	"github.com/ipfs/boxo/path"
	"github.com/ipfs/kubo/client/rpc"
	"github.com/ipfs/kubo/core/coreiface/options"
	ma "github.com/multiformats/go-multiaddr"
)

// Errors a caller maps to HTTP statuses.
var (
	// ErrUnavailable means the kubo node could not be reached.
	ErrUnavailable = errors.New("IPFS node unreachable")
	// ErrTimeout means the node did not deliver in time.
	ErrTimeout = errors.New("IPFS fetch timed out")
	// ErrTooLarge means the content is larger than allowed.
	ErrTooLarge = errors.New("content too large")
	// ErrNotFound means the node does not have the content (offline) or
	// the path does not exist.
	ErrNotFound = errors.New("not found in IPFS")
	// ErrNotFile means the path names a directory where a file is needed,
	// or the reverse.
	ErrNotFile = errors.New("not a file")
)

// Client talks to one kubo node over its RPC API.
type Client struct {
	api  *rpc.HttpApi
	http *http.Client
	base string // http://host:port, without /api/v0
}

// New connects to the kubo RPC API at addr, a multiaddr
// ("/ip4/127.0.0.1/tcp/5001"), an http URL ("http://127.0.0.1:5001"), or
// "unix:SOCKET" (an HTTP server speaking the RPC API on a unix socket, "@"
// for an abstract one: the manager's MFS proxy, which is how children reach
// MFS). It makes no request. Connections are kept alive between calls (the
// client/rpc constructor from a multiaddr alone disables keep-alive).
func New(addr string) (*Client, error) {
	dialer := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	dial := dialer.DialContext
	sock, isUnix := strings.CutPrefix(addr, "unix:")
	if isUnix {
		if sock == "" {
			return nil, fmt.Errorf("ipfs api %q: no socket", addr)
		}
		dial = func(ctx context.Context, _, _ string) (net.Conn, error) {
			return dialer.DialContext(ctx, "unix", sock)
		}
	}
	hc := &http.Client{Transport: &http.Transport{
		Proxy:               nil, // the node is local; never route through HTTP_PROXY
		DialContext:         dial,
		MaxIdleConns:        64,
		MaxIdleConnsPerHost: 64,
		IdleConnTimeout:     90 * time.Second,
	}}
	var api *rpc.HttpApi
	var err error
	base := ""
	if isUnix {
		base = "http://unix" // the host is not dialled; the socket is
		api, err = rpc.NewURLApiWithClient(base, hc)
	} else if strings.HasPrefix(addr, "http://") || strings.HasPrefix(addr, "https://") {
		base = strings.TrimRight(addr, "/")
		api, err = rpc.NewURLApiWithClient(base, hc)
	} else {
		var m ma.Multiaddr
		m, err = ma.NewMultiaddr(addr)
		if err == nil {
			base, err = baseURL(m)
		}
		if err == nil {
			api, err = rpc.NewApiWithClient(m, hc)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("ipfs api %q: %w", addr, err)
	}
	return &Client{api: api, http: hc, base: base}, nil
}

// baseURL turns /ip4/H/tcp/P (or /dns*/H/tcp/P) into http://H:P.
func baseURL(m ma.Multiaddr) (string, error) {
	var host, port string
	for _, c := range m {
		switch c.Protocol().Code {
		case ma.P_IP4, ma.P_DNS, ma.P_DNS4, ma.P_DNS6:
			host = c.Value()
		case ma.P_IP6:
			host = "[" + c.Value() + "]"
		case ma.P_TCP:
			port = c.Value()
		}
	}
	if host == "" || port == "" {
		return "", fmt.Errorf("want /ip4|ip6|dns/HOST/tcp/PORT")
	}
	return "http://" + host + ":" + port, nil
}

// WithHeader returns a client that sends header name: value with every
// call, sharing c's connections (the grant token of one request's calls to
// the MFS proxy).
func (c *Client) WithHeader(name, value string) (*Client, error) {
	api, err := rpc.NewURLApiWithClient(c.base, c.http)
	if err != nil {
		return nil, fmt.Errorf("ipfs api %s: %w", c.base, err)
	}
	api.Headers.Set(name, value)
	return &Client{api: api, http: c.http, base: c.base}, nil
}

// API is the kubo client, for the parts of this package that need its raw
// request builder (MFS).
func (c *Client) API() *rpc.HttpApi { return c.api }

// BaseURL is the node's http://host:port.
func (c *Client) BaseURL() string { return c.base }

// Close drops idle connections.
func (c *Client) Close() { c.http.CloseIdleConnections() }

// classify maps transport and kubo errors onto this package's errors.
func classify(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	switch {
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.ENOENT):
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) && opErr.Op == "dial" {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	msg := err.Error()
	switch {
	case strings.Contains(msg, "not found locally"), strings.Contains(msg, "no link named"),
		strings.Contains(msg, "file does not exist"), strings.Contains(msg, "could not resolve name"),
		strings.Contains(msg, "failed to resolve"), strings.Contains(msg, "not found"):
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	case strings.Contains(msg, "invalid path"), strings.Contains(msg, "invalid cid"), strings.Contains(msg, "selected encoding not supported"):
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	return err
}

// parsePath accepts "/ipfs/CID[/sub]", "/ipns/NAME[/sub]" or a bare CID.
func parsePath(p string) (path.Path, error) {
	if !strings.HasPrefix(p, "/") {
		p = "/ipfs/" + p
	}
	pp, err := path.NewPath(p)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrNotFound, err)
	}
	return pp, nil
}

// Fetch reads the file at p ("/ipfs/CID[/sub]", "/ipns/NAME[/sub]" or a
// CID) whole, failing with ErrTooLarge as soon as it passes max bytes
// (checked against the announced size first, then while streaming).
func (c *Client) Fetch(ctx context.Context, p string, max int64) ([]byte, error) {
	pp, err := parsePath(p)
	if err != nil {
		return nil, err
	}
	nd, err := c.api.Unixfs().Get(ctx, pp)
	if err != nil {
		return nil, classify(ctx, err)
	}
	defer nd.Close()
	f, ok := nd.(files.File)
	if !ok {
		return nil, fmt.Errorf("%w: %s is a directory", ErrNotFile, p)
	}
	if size, err := f.Size(); err == nil && max > 0 && size > max {
		return nil, fmt.Errorf("%w: %s has %d bytes, over %d", ErrTooLarge, p, size, max)
	}
	r := io.Reader(f)
	if max > 0 {
		r = io.LimitReader(f, max+1)
	}
	b, err := io.ReadAll(r)
	if err != nil {
		return nil, classify(ctx, err)
	}
	if max > 0 && int64(len(b)) > max {
		return nil, fmt.Errorf("%w: %s has more than %d bytes", ErrTooLarge, p, max)
	}
	return b, nil
}

// Resolve resolves p (an /ipns/ path, or an /ipfs/ path through its links)
// to an /ipfs/CID path.
func (c *Client) Resolve(ctx context.Context, p string) (string, error) {
	pp, err := parsePath(p)
	if err != nil {
		return "", err
	}
	if pp.Namespace() == path.IPNSNamespace {
		resolved, err := c.api.Name().Resolve(ctx, pp.String(), options.Name.Cache(true))
		if err != nil {
			return "", classify(ctx, err)
		}
		pp = resolved
	}
	ip, _, err := c.api.ResolvePath(ctx, pp)
	if err != nil {
		return "", classify(ctx, err)
	}
	return "/ipfs/" + ip.RootCid().String(), nil
}

// DirLimits bound one directory fetch: the bytes of its files and the
// number of its entries (files, directories and skipped symlinks alike, so
// a tree of a million empty files or directories is refused too). A zero
// field is no bound.
type DirLimits struct {
	MaxBytes int64
	MaxFiles int
}

// ErrDirTooLarge means a directory is over its DirLimits. It wraps
// ErrTooLarge.
var ErrDirTooLarge = fmt.Errorf("%w: directory", ErrTooLarge)

// GetDir writes the UnixFS directory at p into dir (which must not exist
// yet), through a temporary sibling and a rename, so a half-fetched tree is
// never seen. It stops with ErrDirTooLarge as soon as lim is passed (a
// file's announced size is checked before it is read, and its bytes while
// they stream), and then removes what it wrote: nothing of a refused
// directory stays on disk.
func (c *Client) GetDir(ctx context.Context, p, dir string, lim DirLimits) error {
	pp, err := parsePath(p)
	if err != nil {
		return err
	}
	nd, err := c.api.Unixfs().Get(ctx, pp)
	if err != nil {
		return classify(ctx, err)
	}
	defer nd.Close()
	d, ok := nd.(files.Directory)
	if !ok {
		return fmt.Errorf("%w: %s is not a directory", ErrNotFile, p)
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o755); err != nil {
		return err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), filepath.Base(dir)+".*.tmp")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	w := &dirWriter{ctx: ctx, lim: lim, p: p}
	if err := w.write(d, tmp); err != nil {
		return err
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return err
	}
	if err := os.Rename(tmp, dir); err != nil && !errors.Is(err, os.ErrExist) {
		if _, serr := os.Stat(dir); serr == nil {
			return nil // another fetch finished first; same content
		}
		return err
	}
	return nil
}

// dirWriter copies one directory tree, counting against its limits.
type dirWriter struct {
	ctx     context.Context
	lim     DirLimits
	p       string
	bytes   int64
	entries int
}

func (w *dirWriter) tooLarge(what string) error {
	return fmt.Errorf("%w: %s has more than %s", ErrDirTooLarge, w.p, what)
}

func (w *dirWriter) write(d files.Directory, dir string) error {
	it := d.Entries()
	for it.Next() {
		name := it.Name()
		if name == "" || name == "." || name == ".." || strings.ContainsRune(name, '/') {
			return fmt.Errorf("ipfs: bad entry name %q", name)
		}
		w.entries++
		if w.lim.MaxFiles > 0 && w.entries > w.lim.MaxFiles {
			return w.tooLarge(fmt.Sprintf("%d entries (max_dir_files)", w.lim.MaxFiles))
		}
		if err := w.entry(it.Node(), filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	if err := it.Err(); err != nil {
		return classify(w.ctx, err)
	}
	return nil
}

// entry writes one node and closes it (each holds an RPC response open).
func (w *dirWriter) entry(nd files.Node, target string) error {
	defer nd.Close()
	switch n := nd.(type) {
	case files.Directory:
		if err := os.Mkdir(target, 0o755); err != nil {
			return err
		}
		return w.write(n, target)
	case files.File:
		if w.lim.MaxBytes > 0 {
			if size, err := n.Size(); err == nil && w.bytes+size > w.lim.MaxBytes {
				return w.tooLarge(fmt.Sprintf("%d bytes (max_dir_size)", w.lim.MaxBytes))
			}
		}
		f, err := os.OpenFile(target, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if err != nil {
			return err
		}
		r := io.Reader(n)
		if w.lim.MaxBytes > 0 {
			r = io.LimitReader(n, w.lim.MaxBytes-w.bytes+1)
		}
		c, err := io.Copy(f, r)
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return classify(w.ctx, err)
		}
		w.bytes += c
		if w.lim.MaxBytes > 0 && w.bytes > w.lim.MaxBytes {
			return w.tooLarge(fmt.Sprintf("%d bytes (max_dir_size)", w.lim.MaxBytes))
		}
	default:
		// Symlinks and other node kinds are left out: volumes never
		// follow symlinks anyway.
	}
	return nil
}

// Add stores b in the node (pinned, CIDv1) and returns its CID; used by
// tests and tools.
func (c *Client) Add(ctx context.Context, b []byte) (string, error) {
	p, err := c.api.Unixfs().Add(ctx, files.NewBytesFile(b), options.Unixfs.CidVersion(1), options.Unixfs.Pin(true, ""))
	if err != nil {
		return "", classify(ctx, err)
	}
	return p.RootCid().String(), nil
}
