package mfsproxy_test

import (
	"context"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/internal/mfsproxy"
)

// blockingKubo stands for a node whose files/stat does not answer until
// the call is cancelled: calls stay in flight as long as the test wants.
type blockingKubo struct {
	arrived   chan struct{}
	cancelled chan struct{}
}

func (b *blockingKubo) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.arrived <- struct{}{}
	<-r.Context().Done()
	b.cancelled <- struct{}{}
}

func startBlocking(t *testing.T) (*mfsproxy.Proxy, *blockingKubo, *http.Client) {
	t.Helper()
	bk := &blockingKubo{arrived: make(chan struct{}, 16), cancelled: make(chan struct{}, 16)}
	kubo := httptest.NewServer(bk)
	t.Cleanup(kubo.Close)
	p, err := mfsproxy.Start(kubo.URL, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	sock := strings.TrimPrefix(p.Addr(), "unix:")
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return p, bk, &http.Client{Transport: tr}
}

func stat(hc *http.Client, token string) (int, error) {
	req, _ := http.NewRequest("POST", "http://x/api/v0/files/stat?arg=/wagi/app", nil)
	req.Header.Set(ipc.MFSGrantHeader, token)
	resp, err := hc.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// wait receives from ch or fails after a generous bound (the bound is on
// the test hanging, not on speed).
func wait(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		t.Fatalf("timed out waiting for %s", what)
	}
}

func TestACallPastTheInflightBoundIsRefusedAndRevokeEndsCallsInFlight(t *testing.T) {
	p, bk, hc := startBlocking(t)
	token := p.Grant("req-busy", pid(), []mfsproxy.Root{{Path: "/wagi/app"}})
	var wg sync.WaitGroup
	statuses := make(chan int, mfsproxy.MaxInflight)
	for range mfsproxy.MaxInflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, err := stat(hc, token)
			if err != nil {
				t.Error(err)
			}
			statuses <- s
		}()
	}
	for range mfsproxy.MaxInflight {
		wait(t, bk.arrived, "a call to reach kubo")
	}
	if s, err := stat(hc, token); err != nil || s != http.StatusTooManyRequests {
		t.Fatalf("call %d in flight: %d %v, want 429", mfsproxy.MaxInflight+1, s, err)
	}
	p.Revoke(token)
	for range mfsproxy.MaxInflight {
		wait(t, bk.cancelled, "kubo to see a call cancelled")
	}
	wg.Wait()
	close(statuses)
	for s := range statuses {
		if s != http.StatusBadGateway {
			t.Errorf("a call cut by Revoke answered %d, want 502", s)
		}
	}
	if s, err := stat(hc, token); err != nil || s != http.StatusForbidden {
		t.Fatalf("after Revoke: %d %v, want 403", s, err)
	}
}

func TestCloseEndsCallsInFlight(t *testing.T) {
	p, bk, hc := startBlocking(t)
	token := p.Grant("req-closing", pid(), []mfsproxy.Root{{Path: "/wagi/app"}})
	done := make(chan struct{})
	go func() {
		defer close(done)
		_, _ = stat(hc, token) // cut: an error or a 502, either is fine
	}()
	wait(t, bk.arrived, "the call to reach kubo")
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	wait(t, bk.cancelled, "kubo to see the call cancelled")
	wait(t, done, "the client to see its call end")
	if _, err := stat(hc, token); err == nil {
		t.Fatal("the proxy still answers after Close")
	}
}

func TestOneProcessCannotHoldMoreThanItsShareOfConnections(t *testing.T) {
	p, _, hc := startBlocking(t)
	sock := strings.TrimPrefix(p.Addr(), "unix:")
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range mfsproxy.MaxConnsPerPID + 1 {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	// The last one is closed by the proxy without a word; the others are
	// open (they would time out after 10 s without a request).
	last := conns[len(conns)-1]
	_ = last.SetReadDeadline(time.Now().Add(20 * time.Second))
	if n, err := last.Read(make([]byte, 1)); err != io.EOF {
		t.Fatalf("connection %d: read %d, %v; want EOF", len(conns), n, err)
	}
	first := conns[0]
	_ = first.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	if _, err := first.Read(make([]byte, 1)); err == nil || !os.IsTimeout(err) {
		t.Fatalf("connection 1: %v, want it open (a read timeout)", err)
	}
	// Once some are closed, the process gets connections again.
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	token := p.Grant("req-after", pid(), []mfsproxy.Root{{Path: "/wagi/app"}})
	p.Revoke(token)
	deadline := time.Now().Add(20 * time.Second)
	for {
		s, err := stat(hc, token)
		if err == nil && s == http.StatusForbidden {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no connection after the others closed: %d %v", s, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
