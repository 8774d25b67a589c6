package egress

import (
	"io"
	"log/slog"
	"net/http"
	"os"
	"testing"
	"time"
)

// The per-call overhead of the proxy (RATIONALE.md, "What a call costs"):
// a loopback GET of a 13-byte body, direct from this process and through
// the proxy the way a child calls it (a unix connection per call, the
// WAGI-framed request and answer).
//
//	go test ./internal/egress -run '^$' -bench . -benchtime 500x

func benchUpstream(b *testing.B) *upstream {
	return newUpstream(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, "Hello, world!")
	}))
}

func BenchmarkDirectGETKeepAlive(b *testing.B) {
	up := benchUpstream(b)
	defer up.Close()
	c := &http.Client{Transport: &http.Transport{}}
	for b.Loop() {
		resp, err := c.Get(up.URL)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
}

func BenchmarkDirectGETNewConnection(b *testing.B) {
	up := benchUpstream(b)
	defer up.Close()
	c := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for b.Loop() {
		resp, err := c.Get(up.URL)
		if err != nil {
			b.Fatal(err)
		}
		_, _ = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
}

func benchServer(b *testing.B) *Server {
	s, err := Start(slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	return s
}

func benchGrant(s *Server, up *upstream) string {
	return s.Grant(Grant{ID: "bench", PID: os.Getpid(), AllowedHosts: []string{"http://" + up.Listener.Addr().String()},
		Limits:   Limits{MaxRequests: 1 << 30, MaxConcurrency: 4, MaxResponse: 1 << 20, Timeout: 10 * time.Second},
		Deadline: time.Now().Add(time.Hour)})
}

// BenchmarkProxiedGETOneGrant: many calls of one guest request (the
// grant's upstream connection is kept alive between them).
func BenchmarkProxiedGETOneGrant(b *testing.B) {
	up := benchUpstream(b)
	defer up.Close()
	s := benchServer(b)
	defer s.Close()
	token := benchGrant(s, up)
	for b.Loop() {
		if _, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: up.URL}, 1<<20); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkProxiedGETGrantPerCall: one call per guest request, the common
// case (a fresh grant, so a fresh upstream connection, each time).
func BenchmarkProxiedGETGrantPerCall(b *testing.B) {
	up := benchUpstream(b)
	defer up.Close()
	s := benchServer(b)
	defer s.Close()
	for b.Loop() {
		token := benchGrant(s, up)
		if _, err := Call(s.Addr(), &Request{Token: token, Method: "GET", URL: up.URL}, 1<<20); err != nil {
			b.Fatal(err)
		}
		s.Revoke(token)
	}
}
