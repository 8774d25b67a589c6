package modsource

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

func TestURLSourceFetchChecksEverythingBeforeReturningBytes(t *testing.T) {
	module := []byte("\x00asm\x01\x00\x00\x00 a module")
	sum := sha256.Sum256(module)
	digest := hex.EncodeToString(sum[:])
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(module) }))
	defer plain.Close()
	mux := http.NewServeMux()
	mux.HandleFunc("/m.wasm", func(w http.ResponseWriter, r *http.Request) { _, _ = w.Write(module) })
	mux.HandleFunc("/big.wasm", func(w http.ResponseWriter, r *http.Request) {
		w.(http.Flusher).Flush() // no Content-Length: the cap is found while reading
		_, _ = w.Write(append(module, make([]byte, 1<<20)...))
	})
	mux.HandleFunc("/to-plain", func(w http.ResponseWriter, r *http.Request) {
		// http://127.0.0.1 is loopback, so allowed; a plain
		// non-loopback host is not.
		http.Redirect(w, r, "http://example.invalid/m.wasm", http.StatusFound)
	})
	mux.HandleFunc("/to-loopback", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, plain.URL+"/m.wasm", http.StatusFound)
	})
	mux.HandleFunc("/slow", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-time.After(5 * time.Second):
		}
	})
	mux.HandleFunc("/short", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "100") // and the connection ends after 8
		_, _ = w.Write(module[:8])
	})
	mux.HandleFunc("/denied", func(w http.ResponseWriter, r *http.Request) { http.Error(w, "no", http.StatusForbidden) })
	srv := httptest.NewTLSServer(mux)
	defer srv.Close()
	client := srv.Client()
	client.CheckRedirect = checkRedirect

	tests := []struct {
		name, path, digest string
		timeout            time.Duration
		want               error
		failure            Failure
	}{
		{name: "the right digest gives the bytes", path: "/m.wasm", digest: digest},
		{name: "a wrong digest is refused", path: "/m.wasm", digest: strings.Repeat("0", 64), want: ErrDigestMismatch, failure: Unusable},
		{name: "more than max bytes is refused", path: "/big.wasm", digest: digest, want: ErrTooLarge, failure: Unusable},
		{name: "a missing file is not found", path: "/none.wasm", digest: digest, want: ErrNotFound, failure: Unusable},
		{name: "a body shorter than its Content-Length is refused", path: "/short", digest: digest, want: ErrRefused, failure: Unusable},
		{name: "a 403 is refused", path: "/denied", digest: digest, want: ErrRefused, failure: Unusable},
		{name: "a redirect to plain http elsewhere is refused", path: "/to-plain", digest: digest, want: ErrRefused, failure: Unusable},
		{name: "a redirect to plain http on loopback is followed", path: "/to-loopback", digest: digest},
		{name: "a server slower than the fetch timeout times out", path: "/slow", digest: digest, timeout: 200 * time.Millisecond, want: ErrTimeout, failure: TimedOut},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := &urlSource{url: srv.URL + tt.path, digest: tt.digest, client: client}
			timeout := tt.timeout
			if timeout == 0 {
				timeout = 10 * time.Second
			}
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			defer cancel()
			id, err := s.Resolve(ctx)
			if err != nil || id != s.Name() {
				t.Fatalf("Resolve = %q, %v; want the name, without I/O", id, err)
			}
			bin, err := s.Fetch(ctx, id, 4096)
			if tt.want == nil {
				if err != nil || string(bin) != string(module) {
					t.Fatalf("Fetch = %q, %v", bin, err)
				}
				return
			}
			if !errors.Is(err, tt.want) || bin != nil {
				t.Fatalf("Fetch = %d bytes, %v; want %v and no bytes", len(bin), err, tt.want)
			}
			if f, _, ok := s.Classify(err, false); !ok || f != tt.failure {
				t.Errorf("Classify = %d, %v; want %d", f, ok, tt.failure)
			}
		})
	}
}

func TestURLSourceIsUnavailableWhenItsServerIsDown(t *testing.T) {
	srv := httptest.NewServer(http.NotFoundHandler())
	url := srv.URL
	srv.Close()
	s := &urlSource{url: url + "/m.wasm", digest: strings.Repeat("0", 64), client: newHTTPClient()}
	_, err := s.Fetch(context.Background(), s.Name(), 4096)
	if !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Fetch = %v, want ErrUnavailable", err)
	}
	if f, _, _ := s.Classify(err, false); f != Unreachable {
		t.Errorf("Classify = %d, want Unreachable (503 with a Retry-After)", f)
	}
}

// A remote server must not steer the manager into plain-HTTP requests on
// this machine (the kubo RPC API, a registry's admin port, ...): http://
// on loopback is for a module served from loopback, so a redirect there is
// followed only from a loopback URL.
func TestARedirectToLoopbackIsFollowedOnlyFromLoopback(t *testing.T) {
	req := func(u string) *http.Request {
		r, err := http.NewRequest(http.MethodGet, u, nil)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	tests := []struct {
		name, from, to string
		allowed        bool
	}{
		{"https anywhere to https anywhere", "https://modules.example/m.wasm", "https://cdn.example/m.wasm", true},
		{"loopback to loopback over http", "http://127.0.0.1:8080/m.wasm", "http://localhost:9090/m.wasm", true},
		{"a remote https server to http on 127.0.0.1", "https://modules.example/m.wasm", "http://127.0.0.1:5001/api/v0/shutdown", false},
		{"a remote https server to http on localhost", "https://modules.example/m.wasm", "http://localhost:5000/v2/", false},
		{"a remote https server to http on ::1", "https://modules.example/m.wasm", "http://[::1]:80/", false},
		{"a remote server via loopback https to http on loopback", "https://modules.example/m.wasm", "http://127.0.0.1/", false},
		{"a remote https server to https on loopback", "https://modules.example/m.wasm", "https://127.0.0.1:8443/m.wasm", false},
		{"a remote https server to localhost. (trailing dot)", "https://modules.example/m.wasm", "https://localhost.:8443/m.wasm", false},
		{"a remote https server to a name under localhost", "https://modules.example/m.wasm", "https://kubo.localhost:5001/", false},
		{"a remote https server to 0.0.0.0 (this machine)", "https://modules.example/m.wasm", "https://0.0.0.0:8443/m.wasm", false},
		{"a remote https server to an IPv4-mapped loopback", "https://modules.example/m.wasm", "https://[::ffff:127.0.0.1]:8443/m.wasm", false},
		{"a remote https server to plain http elsewhere", "https://modules.example/m.wasm", "http://cdn.example/m.wasm", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			via := []*http.Request{req(tt.from)}
			if strings.Contains(tt.name, "via loopback https") {
				via = append(via, req("https://127.0.0.1:8443/hop"))
			}
			err := checkRedirect(req(tt.to), via)
			if tt.allowed && err != nil {
				t.Fatalf("refused: %v", err)
			}
			if !tt.allowed && !errors.Is(err, ErrRefused) {
				t.Fatalf("checkRedirect = %v, want ErrRefused", err)
			}
		})
	}
}
