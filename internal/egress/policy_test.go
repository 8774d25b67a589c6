package egress

import (
	"net/netip"
	"strings"
	"testing"
)

func addrs(ss ...string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		out = append(out, netip.MustParseAddr(s))
	}
	return out
}

// TestPolicyDecidesByEntryURLAndResolvedAddress is the policy's table:
// allowed_hosts entries × the URL a guest asks for × the addresses its
// host resolves to. "allow" is whether the request may connect, "why" a
// part of the refusal.
func TestPolicyDecidesByEntryURLAndResolvedAddress(t *testing.T) {
	public := addrs("93.184.216.34")
	tests := []struct {
		name     string
		entries  []string
		url      string
		resolved []netip.Addr
		allow    bool
		why      string
	}{
		{"no entries deny everything", nil, "https://example.com/", public, false, "no allowed_hosts"},
		{"an exact host and scheme allow", []string{"https://example.com"}, "https://example.com/a?b=c", public, true, ""},
		{"host names compare case-insensitively, with a trailing dot", []string{"https://Example.COM."}, "https://example.com/", public, true, ""},
		{"another scheme is refused", []string{"https://example.com"}, "http://example.com/", public, false, "not in allowed_hosts"},
		{"an entry without a port means the scheme's default port", []string{"https://example.com"}, "https://example.com:8443/", public, false, "not in allowed_hosts"},
		{"the default port written out matches", []string{"https://example.com"}, "https://example.com:443/", public, true, ""},
		{"an entry's port must match", []string{"http://example.com:8080"}, "http://example.com:8080/x", public, true, ""},
		{"an entry's port is not the default", []string{"http://example.com:8080"}, "http://example.com/x", public, false, "not in allowed_hosts"},
		{"another host is refused", []string{"https://example.com"}, "https://example.org/", public, false, "not in allowed_hosts"},
		{"a subdomain is not the host", []string{"https://example.com"}, "https://api.example.com/", public, false, "not in allowed_hosts"},
		{"a wildcard allows subdomains", []string{"https://*.example.com"}, "https://a.b.example.com/", public, true, ""},
		{"a wildcard does not allow its apex", []string{"https://*.example.com"}, "https://example.com/", public, false, "not in allowed_hosts"},
		{"a wildcard does not match a look-alike", []string{"https://*.example.com"}, "https://evilexample.com/", public, false, "not in allowed_hosts"},
		{"allow-all allows any public host", []string{AllowAll}, "http://anything.test:81/", public, true, ""},
		{"allow-all does not open loopback", []string{AllowAll}, "http://127.0.0.1:8080/", addrs("127.0.0.1"), false, "loopback"},
		{"allow-all does not open a name that resolves to loopback", []string{AllowAll}, "http://localhost/", addrs("127.0.0.1", "::1"), false, "loopback"},
		{"allow-all does not open the metadata address", []string{AllowAll}, "http://169.254.169.254/latest/", addrs("169.254.169.254"), false, "metadata"},
		{"allow-all does not open the IPv6 metadata address", []string{AllowAll}, "http://[fd00:ec2::254]/", addrs("fd00:ec2::254"), false, "metadata"},
		{"allow-all does not open private addresses", []string{AllowAll}, "http://intranet/", addrs("10.1.2.3"), false, "private"},
		{"allow-all does not open link-local", []string{AllowAll}, "http://x/", addrs("fe80::1"), false, "link-local"},
		{"allow-all does not open unspecified", []string{AllowAll}, "http://0.0.0.0/", addrs("0.0.0.0"), false, "unspecified"},
		{"allow-all does not open multicast", []string{AllowAll}, "http://x/", addrs("224.0.0.1"), false, "multicast"},
		{"allow-all does not open CGNAT", []string{AllowAll}, "http://x/", addrs("100.100.100.200"), false, "shared"},
		{"IPv4-mapped loopback is loopback", []string{AllowAll}, "http://x/", addrs("::ffff:127.0.0.1"), false, "loopback"},
		{"NAT64 of a private address is private", []string{AllowAll}, "http://x/", addrs("64:ff9b::a00:1"), false, "private"},
		{"a wildcard does not open private addresses", []string{"http://*.corp.example"}, "http://db.corp.example/", addrs("192.168.1.5"), false, "private"},
		{"an entry naming the loopback IP opens it", []string{"http://127.0.0.1:8080"}, "http://127.0.0.1:8080/", addrs("127.0.0.1"), true, ""},
		{"an entry naming a host opens its private addresses", []string{"http://db.internal"}, "http://db.internal/", addrs("10.0.0.7"), true, ""},
		{"an entry naming the IPv6 loopback opens it", []string{"http://[::1]:9000"}, "http://[::1]:9000/", addrs("::1"), true, ""},
		{"naming loopback on one port does not open another port", []string{"http://127.0.0.1:8080"}, "http://127.0.0.1:8081/", addrs("127.0.0.1"), false, "not in allowed_hosts"},
		{"naming loopback on one port beside allow-all does not open another port", []string{"http://127.0.0.1:8080", AllowAll}, "http://127.0.0.1:22/", addrs("127.0.0.1"), false, "loopback"},
		{"naming a host beside allow-all opens it on the named port", []string{"http://127.0.0.1:8080", AllowAll}, "http://127.0.0.1:8080/", addrs("127.0.0.1"), true, ""},
		{"a public host that also resolves to loopback connects to the public address only", []string{AllowAll}, "http://mixed.test/", addrs("127.0.0.1", "93.184.216.34"), true, ""},
		{"user information in the URL is refused", []string{AllowAll}, "http://u:p@example.com/", public, false, "user information"},
		{"a non-http scheme is refused", []string{AllowAll}, "ftp://example.com/", public, false, "scheme"},
		{"a relative URL is refused", []string{AllowAll}, "/just/a/path", public, false, "scheme"},
		{"an over-long URL is refused", []string{AllowAll}, "http://example.com/" + strings.Repeat("a", MaxURL), public, false, "over"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := ParsePolicy(tt.entries)
			if err != nil {
				t.Fatal(err)
			}
			allow, why := decide(p, tt.url, tt.resolved)
			if allow != tt.allow || !strings.Contains(why, tt.why) {
				t.Fatalf("allow = %v (%q), want %v (%q)", allow, why, tt.allow, tt.why)
			}
		})
	}
}

// decide is the proxy's order of checks: the URL against the entries,
// then the resolved addresses (what dial does).
func decide(p *Policy, raw string, resolved []netip.Addr) (bool, string) {
	u, target, err := ParseTarget(raw)
	if err != nil {
		return false, err.Error()
	}
	if ok, why := p.Allows(target); !ok {
		return false, why
	}
	ok, why := p.CheckAddrs(u.Hostname(), target.Port, resolved)
	if len(ok) == 0 {
		return false, why
	}
	for _, a := range ok {
		if Special(a) != "" && !p.NamesHost(u.Hostname(), target.Port) {
			return false, "a special address was kept"
		}
	}
	return true, ""
}

func TestEntriesThatAreNotDestinationsAreRefused(t *testing.T) {
	for _, e := range []string{
		"", "example.com", "ftp://example.com", "https://example.com/path", "https://u@example.com",
		"https://example.com?x", "https://example.com:0", "https://example.com:99999", "https://*",
		"https://*.com", "https://exa mple.com", "https://[fe80::1%eth0]",
	} {
		if _, err := ParseEntry(e); err == nil {
			t.Errorf("ParseEntry(%q) accepted it", e)
		}
	}
	for _, e := range []string{"https://example.com", "https://example.com/", "http://127.0.0.1:8080", "http://[::1]", "https://*.example.com:8443"} {
		if _, err := ParseEntry(e); err != nil {
			t.Errorf("ParseEntry(%q): %v", e, err)
		}
	}
}

// IPv6 forms that carry an IPv4 address, or that a translator or an old
// router turns into one, are special whatever the IPv4 address is: the
// network decides where they go, not the policy.
func TestIPv6FormsThatCarryIPv4OrAreDeprecatedAreSpecial(t *testing.T) {
	for _, a := range []string{
		"::7f00:1",           // IPv4-compatible 127.0.0.1 (deprecated)
		"::a00:1",            // IPv4-compatible 10.0.0.1
		"::ffff:0:7f00:1",    // IPv4-translated (SIIT) 127.0.0.1
		"::ffff:0:a9fe:a9fe", // IPv4-translated 169.254.169.254
		"64:ff9b:1::a00:1",   // local-use NAT64 (RFC 8215)
		"fec0::1",            // site-local (deprecated, still routed by some)
	} {
		if Special(netip.MustParseAddr(a)) == "" {
			t.Errorf("Special(%s) = \"\": a guest could reach it past allow-all", a)
		}
	}
	if r := Special(netip.MustParseAddr("2606:4700::1111")); r != "" {
		t.Errorf("a public IPv6 address is %q", r)
	}
}

// Azure's WireServer (168.63.129.16) is in a public range but is the
// platform's own endpoint next to its metadata service: as special as
// 169.254.169.254.
func TestAzureWireServerIsAMetadataAddress(t *testing.T) {
	p, err := ParsePolicy([]string{AllowAll})
	if err != nil {
		t.Fatal(err)
	}
	allow, why := decide(p, "http://168.63.129.16/machine?comp=goalstate", addrs("168.63.129.16"))
	if allow || !strings.Contains(why, "metadata") {
		t.Fatalf("allow = %v (%q), want a refusal as a metadata address", allow, why)
	}
}
