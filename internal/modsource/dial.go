package modsource

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/wagi-fcgi/wagi-fcgi/internal/egress"
)

// The manager runs as root, next to services that trust the machine and
// its network (the kubo RPC API, a registry's admin port, a cloud's
// metadata service). A configured module names its server, and the
// operator may well name an internal one; but a redirect, or a registry's
// token realm, is chosen by that server. So fetches go through a dialer
// that connects only to addresses egress.Special calls public, unless the
// configured host is itself special (then the operator chose to trust
// that network). The dialer resolves once and connects to the address it
// checked, and connections are not kept for reuse: a connection made for
// one fetch's internal origin must not carry another fetch's redirect.

type originKey struct{}

// withOrigin marks ctx with the configured host a fetch starts from.
func withOrigin(ctx context.Context, host string) context.Context {
	return context.WithValue(ctx, originKey{}, originSpecial(ctx, host))
}

// originSpecial reports whether host is loopback or resolves to an
// address egress.Special names (a host that does not resolve is not: the
// fetch fails at its dial anyway).
func originSpecial(ctx context.Context, host string) bool {
	if loopbackName(host) {
		return true
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		return egress.Special(ip) != ""
	}
	ips, err := net.DefaultResolver.LookupNetIP(ctx, "ip", host)
	if err != nil {
		return false
	}
	for _, ip := range ips {
		if egress.Special(ip) != "" {
			return true
		}
	}
	return false
}

// errSpecialAddress is a dial refused by the guard.
var errSpecialAddress = errors.New("only addresses the configured server did not name as its own network")

// guardedDial dials addr unless it resolves only to special addresses
// that the fetch's origin does not open.
func guardedDial(d *net.Dialer) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, portStr, err := net.SplitHostPort(addr)
		if err != nil {
			return nil, err
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("dial %s: bad port", addr)
		}
		var ips []netip.Addr
		if ip, err := netip.ParseAddr(host); err == nil {
			ips = []netip.Addr{ip}
		} else if loopbackName(host) {
			ips = []netip.Addr{netip.MustParseAddr("127.0.0.1"), netip.IPv6Loopback()}
		} else if ips, err = net.DefaultResolver.LookupNetIP(ctx, "ip", host); err != nil {
			return nil, err
		}
		open, _ := ctx.Value(originKey{}).(bool)
		var lastErr error
		for _, ip := range ips {
			if why := egress.Special(ip); why != "" && !open {
				lastErr = fmt.Errorf("%w: %s is %s (%s resolves to it), %w", ErrRefused, ip, why, host, errSpecialAddress)
				continue
			}
			c, err := d.DialContext(ctx, network, netip.AddrPortFrom(ip.Unmap(), uint16(port)).String())
			if err == nil {
				return c, nil
			}
			lastErr = err
		}
		if lastErr == nil {
			lastErr = fmt.Errorf("dial %s: no address", addr)
		}
		return nil, lastErr
	}
}
