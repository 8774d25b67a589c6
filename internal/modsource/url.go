package modsource

import (
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"syscall"
	"time"
)

// urlSource is an https:// URL (or http:// from a loopback host) whose
// bytes must have a configured sha256: Spin's `source = { url, digest }`.
// The reference is immutable: the digest is its identity, so the module is
// fetched once and served from the store after that, server down or not.
type urlSource struct {
	url    string
	digest string // hex sha256
	client *http.Client
}

func (s *urlSource) Kind() string                            { return "its URL" }
func (s *urlSource) Name() string                            { return s.url + "@sha256:" + s.digest }
func (s *urlSource) Remote() bool                            { return true }
func (s *urlSource) TTL() time.Duration                      { return 0 }
func (s *urlSource) Resolve(context.Context) (string, error) { return s.Name(), nil }

func (s *urlSource) Fetch(ctx context.Context, _ string, max int64) ([]byte, error) {
	if u, err := url.Parse(s.url); err == nil {
		ctx = withOrigin(ctx, u.Hostname())
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.url, nil)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", s.url, err)
	}
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", s.url, classify(ctx, err))
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		return nil, fmt.Errorf("fetch %s: %w (HTTP %s)", s.url, ErrNotFound, resp.Status)
	case resp.StatusCode != http.StatusOK:
		return nil, fmt.Errorf("fetch %s: %w: HTTP %s", s.url, ErrRefused, resp.Status)
	case max > 0 && resp.ContentLength > max:
		return nil, fmt.Errorf("fetch %s: %w: %d bytes announced, over %d", s.url, ErrTooLarge, resp.ContentLength, max)
	}
	body := io.Reader(resp.Body)
	if max > 0 {
		body = io.LimitReader(resp.Body, max+1)
	}
	bin, err := io.ReadAll(body)
	if err != nil {
		// A body cut short (unexpected EOF) is the server's fault: 502.
		return nil, fmt.Errorf("fetch %s: %w", s.url, refusedUnlessKnown(classify(ctx, err)))
	}
	if max > 0 && int64(len(bin)) > max {
		return nil, fmt.Errorf("fetch %s: %w: more than %d bytes", s.url, ErrTooLarge, max)
	}
	// Nothing else sees the bytes before this check.
	sum := sha256.Sum256(bin)
	if got := hex.EncodeToString(sum[:]); got != s.digest {
		return nil, fmt.Errorf("fetch %s: %w: its %d bytes have sha256:%s, the config says sha256:%s; nothing was stored",
			s.url, ErrDigestMismatch, len(bin), got, s.digest)
	}
	return bin, nil
}

func (s *urlSource) Classify(err error, _ bool) (Failure, string, bool) {
	return netFailure(err, "its server")
}

// maxRedirects bounds the redirects followed for one fetch.
const maxRedirects = 5

// newHTTPClient is the client for URL modules and OCI registries. Its
// trusted roots are the system's (SSL_CERT_FILE and SSL_CERT_DIR name
// others); fetches are bounded by their context (fetch_timeout).
func newHTTPClient() *http.Client {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.ResponseHeaderTimeout = 30 * time.Second
	t.Proxy = nil // the manager's environment does not steer its fetches
	t.DialContext = guardedDial(&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second})
	t.DisableKeepAlives = true // see dial.go
	return &http.Client{Transport: t, CheckRedirect: checkRedirect}
}

// checkRedirect follows a redirect only to https://, or to http:// on a
// loopback host: a module (or a registry's blob) never arrives in clear
// text from elsewhere, even though its digest would catch a change. And
// a redirect reaches this machine's loopback only when every URL before
// it was on loopback: a remote server must not steer the manager (root)
// into requests to services that listen on loopback alone (the kubo RPC
// API, a registry's admin port).
func checkRedirect(req *http.Request, via []*http.Request) error {
	if len(via) >= maxRedirects {
		return fmt.Errorf("%w: more than %d redirects", ErrRefused, maxRedirects)
	}
	if loopback(req.URL) {
		for _, r := range via {
			if !loopback(r.URL) {
				return fmt.Errorf("%w: %s redirected to loopback (%s)", ErrRefused, r.URL.Redacted(), req.URL.Redacted())
			}
		}
	}
	if req.URL.Scheme == "https" || req.URL.Scheme == "http" && loopback(req.URL) {
		return nil
	}
	return fmt.Errorf("%w: redirect to %s is not https", ErrRefused, req.URL.Redacted())
}

// refusedUnlessKnown is err if it is one of this package's errors, else
// err as ErrRefused: what classify does not recognise while reading an
// answer is the server breaking the protocol.
func refusedUnlessKnown(err error) error {
	for _, known := range []error{ErrUnavailable, ErrTimeout, ErrNotFound, ErrTooLarge, ErrDigestMismatch, ErrNoModule, ErrRefused} {
		if errors.Is(err, known) {
			return err
		}
	}
	return fmt.Errorf("%w: %v", ErrRefused, err)
}

// loopback reports whether u names this machine: localhost and names
// under it (resolvers map them to loopback), a loopback address, or the
// unspecified address (connecting to 0.0.0.0 reaches this machine).
func loopback(u *url.URL) bool {
	return loopbackName(u.Hostname())
}

// loopbackName is loopback for a host name or address.
func loopbackName(host string) bool {
	h := strings.ToLower(strings.TrimSuffix(host, "."))
	if h == "localhost" || strings.HasSuffix(h, ".localhost") {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && (ip.IsLoopback() || ip.IsUnspecified())
}

// classify turns a transport error into one of this package's errors,
// keeping its text.
func classify(ctx context.Context, err error) error {
	var ne net.Error
	var unknownCA x509.UnknownAuthorityError
	var certErr *tls.CertificateVerificationError
	var hostErr x509.HostnameError
	switch {
	case errors.Is(err, ErrRefused), errors.Is(err, ErrNotFound), errors.Is(err, ErrTooLarge),
		errors.Is(err, ErrDigestMismatch), errors.Is(err, ErrNoModule), errors.Is(err, ErrUnavailable), errors.Is(err, ErrTimeout):
		return err
	case errors.Is(err, context.DeadlineExceeded), errors.Is(ctx.Err(), context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		return fmt.Errorf("%w: %v", ErrTimeout, err)
	case errors.As(err, &certErr), errors.As(err, &unknownCA), errors.As(err, &hostErr):
		return fmt.Errorf("%w: TLS: %v", ErrRefused, err)
	case errors.Is(err, syscall.ECONNREFUSED), errors.Is(err, syscall.ECONNRESET), errors.Is(err, syscall.EHOSTUNREACH),
		errors.Is(err, syscall.ENETUNREACH):
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var dnsErr *net.DNSError
	var opErr *net.OpError
	if errors.As(err, &dnsErr) || errors.As(err, &opErr) {
		return fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	return err
}
