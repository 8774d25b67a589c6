package manager

import (
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// TestPeersNeverHoldTheStatusPage: a kubo that accepts the call and never
// answers costs one status request peersTimeout, and the next ones
// nothing until peersTTL has passed.
func TestPeersNeverHoldTheStatusPage(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	release := make(chan struct{})
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { close(release); _ = srv.Close() })
	c, err := ipfs.New("http://" + l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	var pc peerCache
	tests := []struct {
		name string
		max  time.Duration
	}{
		// Generous bounds: wall time is what is asserted, on a loaded
		// machine.
		{"the first request waits at most the timeout", peersTimeout + 5*time.Second},
		{"the next one answers from the cache at once", time.Second},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start := time.Now()
			peers, errText := pc.get(c)
			if took := time.Since(start); took > tt.max {
				t.Fatalf("took %v, want at most %v", took, tt.max)
			}
			if len(peers) != 0 || errText == "" {
				t.Fatalf("got %v %q, want no peers and the error", peers, errText)
			}
		})
	}
}
