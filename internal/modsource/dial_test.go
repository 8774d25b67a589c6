package modsource

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

func TestOnlyAConfiguredInternalOriginOpensInternalAddresses(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	dial := guardedDial(&net.Dialer{Timeout: 5 * time.Second})
	tests := []struct {
		name   string
		origin string // "" = no origin in the context
		addr   string
		ok     bool
	}{
		{"a fetch from a public origin cannot dial loopback", "93.184.216.34", ln.Addr().String(), false},
		{"nor loopback by name", "93.184.216.34", "localhost:" + port(ln), false},
		{"nor the metadata address", "93.184.216.34", "169.254.169.254:80", false},
		{"a dial with no origin at all is refused too", "", ln.Addr().String(), false},
		{"a loopback origin may dial loopback", "127.0.0.1", ln.Addr().String(), true},
		{"so may an origin named localhost", "localhost", ln.Addr().String(), true},
		{"and a private-network origin", "10.1.2.3", ln.Addr().String(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if tt.origin != "" {
				ctx = withOrigin(ctx, tt.origin)
			}
			c, err := dial(ctx, "tcp", tt.addr)
			if c != nil {
				c.Close()
			}
			if tt.ok && err != nil {
				t.Fatalf("dial %s: %v", tt.addr, err)
			}
			if !tt.ok && (err == nil || !errors.Is(err, ErrRefused)) {
				t.Fatalf("dial %s = %v, want ErrRefused", tt.addr, err)
			}
		})
	}
}

func port(ln net.Listener) string {
	_, p, _ := net.SplitHostPort(ln.Addr().String())
	return p
}
