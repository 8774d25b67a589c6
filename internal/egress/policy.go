package egress

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
)

// AllowAll is WAGI's allowed_hosts entry that allows any http or https
// destination. Here it does not open special addresses (see Policy).
const AllowAll = "insecure:allow-all"

// Entry is one parsed allowed_hosts entry.
type Entry struct {
	Scheme string // "http" or "https"
	// Host is a lower-case host name without a trailing dot, or an IP
	// address in netip's form; Wildcard entries hold the suffix after
	// "*." ("example.com" for "*.example.com").
	Host     string
	Wildcard bool
	IP       netip.Addr // valid when the entry names an IP address
	Port     uint16     // the given port, or the scheme's default
}

// Policy is a module's parsed allowed_hosts: deny by default.
type Policy struct {
	allowAll bool
	entries  []Entry
}

// ParsePolicy parses allowed_hosts entries. An error names the entry.
func ParsePolicy(entries []string) (*Policy, error) {
	p := &Policy{}
	for i, s := range entries {
		if s == AllowAll {
			p.allowAll = true
			continue
		}
		e, err := ParseEntry(s)
		if err != nil {
			return nil, fmt.Errorf("allowed_hosts[%d]: %w", i, err)
		}
		p.entries = append(p.entries, e)
	}
	return p, nil
}

// ParseEntry parses one allowed_hosts entry other than AllowAll:
// "scheme://host[:port]" with an optional "/" after it. host is a name,
// an IP address ([...] for IPv6) or "*.name" (any name below name, not
// name itself, as Spin's allowed_outbound_hosts has it). Without a port
// the entry means the scheme's default port.
func ParseEntry(s string) (Entry, error) {
	if s == "" {
		return Entry{}, errors.New("empty entry")
	}
	scheme, rest, ok := strings.Cut(s, "://")
	if !ok {
		return Entry{}, fmt.Errorf("%q is not scheme://host[:port] (nor %q)", s, AllowAll)
	}
	scheme = strings.ToLower(scheme)
	def, ok := defaultPort(scheme)
	if !ok {
		return Entry{}, fmt.Errorf("%q: scheme %q is not http or https", s, scheme)
	}
	rest = strings.TrimSuffix(rest, "/")
	if strings.ContainsAny(rest, "/?#@") {
		return Entry{}, fmt.Errorf("%q names a destination, not a path, query or user: write scheme://host[:port]", s)
	}
	e := Entry{Scheme: scheme, Port: def}
	hostPart := rest
	if h, port, err := net.SplitHostPort(rest); err == nil {
		n, err := strconv.ParseUint(port, 10, 16)
		if err != nil || n == 0 {
			return Entry{}, fmt.Errorf("%q: port %q is not a number from 1 to 65535", s, port)
		}
		hostPart, e.Port = h, uint16(n)
	} else if strings.HasPrefix(rest, "[") && strings.HasSuffix(rest, "]") {
		hostPart = rest[1 : len(rest)-1]
	}
	if suffix, ok := strings.CutPrefix(hostPart, "*."); ok {
		name, err := canonicalName(suffix)
		if err != nil {
			return Entry{}, fmt.Errorf("%q: %w", s, err)
		}
		if !strings.Contains(name, ".") {
			return Entry{}, fmt.Errorf("%q: a wildcard must stand for names below a domain with a dot, like *.example.com", s)
		}
		e.Host, e.Wildcard = name, true
		return e, nil
	}
	if ip, err := netip.ParseAddr(hostPart); err == nil {
		if ip.Zone() != "" {
			return Entry{}, fmt.Errorf("%q: an address with a zone is not allowed", s)
		}
		e.IP = ip.Unmap()
		e.Host = e.IP.String()
		return e, nil
	}
	name, err := canonicalName(hostPart)
	if err != nil {
		return Entry{}, fmt.Errorf("%q: %w", s, err)
	}
	e.Host = name
	return e, nil
}

// defaultPort is the port of a URL scheme without one.
func defaultPort(scheme string) (uint16, bool) {
	switch scheme {
	case "http":
		return 80, true
	case "https":
		return 443, true
	}
	return 0, false
}

// canonicalName lower-cases a host name and drops a trailing dot; it
// refuses anything that is not letters, digits, '-', '_' and dots (IDNs
// are written in their xn-- form).
func canonicalName(h string) (string, error) {
	h = strings.TrimSuffix(strings.ToLower(h), ".")
	if h == "" || len(h) > 253 {
		return "", fmt.Errorf("host %q is not a host name", h)
	}
	for _, label := range strings.Split(h, ".") {
		if label == "" || len(label) > 63 {
			return "", fmt.Errorf("host %q is not a host name", h)
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !('a' <= c && c <= 'z' || '0' <= c && c <= '9' || c == '-' || c == '_') {
				return "", fmt.Errorf("host %q is not a host name (write IDNs as xn--)", h)
			}
		}
	}
	return h, nil
}

// Target is a request URL reduced to what the policy decides on.
type Target struct {
	Scheme string
	Host   string     // canonical: a lower-case name, or an IP address
	IP     netip.Addr // valid when the URL names an IP address
	Port   uint16
}

// ParseTarget checks a guest's URL: absolute http or https, a host, no
// user information (it would end up in logs), at most MaxURL bytes.
func ParseTarget(raw string) (*url.URL, Target, error) {
	if len(raw) > MaxURL {
		return nil, Target{}, fmt.Errorf("URL of %d bytes, over %d", len(raw), MaxURL)
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, Target{}, errors.New("URL does not parse")
	}
	t, err := TargetOf(u)
	return u, t, err
}

// TargetOf is ParseTarget for a parsed URL (a redirect's).
func TargetOf(u *url.URL) (Target, error) {
	scheme := strings.ToLower(u.Scheme)
	def, ok := defaultPort(scheme)
	if !ok {
		return Target{}, fmt.Errorf("scheme %q is not http or https", u.Scheme)
	}
	if u.User != nil {
		return Target{}, errors.New("URL carries user information")
	}
	if u.Opaque != "" || u.Host == "" {
		return Target{}, errors.New("URL has no host")
	}
	t := Target{Scheme: scheme, Port: def}
	if p := u.Port(); p != "" {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return Target{}, fmt.Errorf("port %q", p)
		}
		t.Port = uint16(n)
	}
	h := u.Hostname()
	if ip, err := netip.ParseAddr(h); err == nil {
		if ip.Zone() != "" {
			return Target{}, errors.New("an address with a zone")
		}
		t.IP = ip.Unmap()
		t.Host = t.IP.String()
		return t, nil
	}
	name, err := canonicalName(h)
	if err != nil {
		return Target{}, err
	}
	t.Host = name
	return t, nil
}

// Allows reports whether the policy lets a request go to t (before its
// address is known), and if not, why.
func (p *Policy) Allows(t Target) (bool, string) {
	if p == nil {
		return false, "no allowed_hosts"
	}
	if p.allowAll {
		return true, ""
	}
	for _, e := range p.entries {
		if e.matches(t) {
			return true, ""
		}
	}
	if len(p.entries) == 0 {
		return false, "no allowed_hosts"
	}
	return false, "not in allowed_hosts"
}

func (e Entry) matches(t Target) bool {
	if e.Scheme != t.Scheme || e.Port != t.Port {
		return false
	}
	if e.Wildcard {
		return !t.IP.IsValid() && strings.HasSuffix(t.Host, "."+e.Host)
	}
	return e.Host == t.Host
}

// NamesHost reports whether an entry names host and port exactly (an IP
// address or a host name, not a wildcard, not AllowAll): only then may
// host's addresses be special ones (see Special). The port counts, so that
// naming one loopback service next to AllowAll does not open the others.
func (p *Policy) NamesHost(host string, port uint16) bool {
	if p == nil {
		return false
	}
	if ip, err := netip.ParseAddr(host); err == nil {
		host = ip.Unmap().String()
	} else {
		host = strings.TrimSuffix(strings.ToLower(host), ".")
	}
	for _, e := range p.entries {
		if !e.Wildcard && e.Host == host && e.Port == port {
			return true
		}
	}
	return false
}

// Special says why ip is an address a guest may reach only through an
// entry that names its host: loopback, private, link-local (and with it
// the cloud metadata address 169.254.169.254), unspecified, multicast,
// broadcast, reserved, shared (CGNAT, where some clouds put their
// metadata service), or the metadata addresses fd00:ec2::254 and
// 168.63.129.16 (Azure's WireServer). "" for a
// public address. IPv4 inside IPv6 (mapped, NAT64, 6to4) is judged by the
// IPv4 address; IPv4-compatible, IPv4-translated, local-use NAT64 and
// site-local IPv6 are reserved whatever they carry.
func Special(ip netip.Addr) string {
	ip = ip.Unmap()
	if ip.Is6() {
		b := ip.As16()
		switch {
		case nat64.Contains(ip):
			return Special(netip.AddrFrom4([4]byte(b[12:16])))
		case sixToFour.Contains(ip):
			return Special(netip.AddrFrom4([4]byte(b[2:6])))
		}
	}
	switch {
	case ip == metadataV4 || ip == metadataV6 || ip == azureWireServer:
		return "cloud metadata address"
	case ip.IsLoopback():
		return "loopback address"
	case ip.IsUnspecified():
		return "unspecified address"
	case ip.IsLinkLocalUnicast():
		return "link-local address"
	case ip.IsMulticast(), ip.IsLinkLocalMulticast(), ip.IsInterfaceLocalMulticast():
		return "multicast address"
	case ip.IsPrivate():
		return "private address"
	}
	for _, r := range reserved {
		if r.Contains(ip) {
			return "reserved or shared address"
		}
	}
	return ""
}

var (
	metadataV4 = netip.MustParseAddr("169.254.169.254")
	metadataV6 = netip.MustParseAddr("fd00:ec2::254")
	// Azure's WireServer: a public-range address that is the platform's
	// own endpoint (goal state, extension settings), beside its IMDS.
	azureWireServer = netip.MustParseAddr("168.63.129.16")
	nat64           = netip.MustParsePrefix("64:ff9b::/96")
	sixToFour       = netip.MustParsePrefix("2002::/16")
	reserved        = []netip.Prefix{
		netip.MustParsePrefix("0.0.0.0/8"),     // "this network"
		netip.MustParsePrefix("100.64.0.0/10"), // shared (CGNAT); 100.100.100.200 is a metadata service
		netip.MustParsePrefix("192.0.0.0/24"),  // IETF protocol assignments
		netip.MustParsePrefix("198.18.0.0/15"), // benchmarking
		netip.MustParsePrefix("240.0.0.0/4"),   // reserved, and the broadcast address
		netip.MustParsePrefix("100::/64"),      // discard
		netip.MustParsePrefix("2001:db8::/32"), // documentation
		// IPv6 that a host, translator or old router may turn into
		// IPv4 (or route inside a site): the policy cannot tell where
		// it goes.
		netip.MustParsePrefix("::/96"),           // IPv4-compatible (deprecated); :: and ::1 are caught above
		netip.MustParsePrefix("::ffff:0:0:0/96"), // IPv4-translated (SIIT)
		netip.MustParsePrefix("64:ff9b:1::/48"),  // local-use NAT64 (RFC 8215)
		netip.MustParsePrefix("fec0::/10"),       // site-local (deprecated)
	}
)

// CheckAddrs keeps the addresses host resolved to that a request to port
// may connect to: all of them when an entry names host and port exactly, else only the
// addresses that are not Special. When none is left, why says so.
func (p *Policy) CheckAddrs(host string, port uint16, addrs []netip.Addr) (ok []netip.Addr, why string) {
	named := p.NamesHost(host, port)
	for _, a := range addrs {
		a = a.Unmap()
		if r := Special(a); r != "" && !named {
			if why == "" {
				why = fmt.Sprintf("%s is a %s, and no allowed_hosts entry names %s", a, r, host)
			}
			continue
		}
		ok = append(ok, a)
	}
	if len(ok) == 0 && why == "" {
		why = "no address for " + host
	}
	return ok, why
}
