package egress

import (
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
)

// validMethod: an HTTP token of at most MaxMethod bytes.
func validMethod(m string) bool {
	if m == "" || len(m) > MaxMethod {
		return false
	}
	for i := 0; i < len(m); i++ {
		if !isTokenChar(m[i]) {
			return false
		}
	}
	return true
}

func isTokenChar(c byte) bool {
	return c > 0x20 && c < 0x7f && !strings.ContainsRune("\"(),/:;<=>?@[\\]{}", rune(c))
}

// dropped are request headers a guest does not set: the proxy frames the
// request and picks the connection itself (and Host must be the host that
// was checked).
var dropped = map[string]bool{
	"Host": true, "Connection": true, "Keep-Alive": true, "Proxy-Connection": true, "Proxy-Authorization": true,
	"Te": true, "Trailer": true, "Transfer-Encoding": true, "Upgrade": true, "Content-Length": true,
}

// parseHeaders decodes WAGI's header string: "name:value" lines; a later
// line replaces an earlier one of the same name (as WAGI's HeaderMap
// insert did).
func parseHeaders(s string) (http.Header, error) {
	h := http.Header{}
	if s == "" {
		return h, nil
	}
	lines := strings.Split(strings.TrimSuffix(s, "\n"), "\n")
	if len(lines) > MaxHeaders {
		return nil, fmt.Errorf("%d header lines, over %d", len(lines), MaxHeaders)
	}
	for _, line := range lines {
		line = strings.TrimSuffix(line, "\r")
		k, v, ok := strings.Cut(line, ":")
		if !ok || !validMethod(k) { // a header name is a token, too
			return nil, fmt.Errorf("header line %q has no valid name", truncate(line))
		}
		v = strings.Trim(v, " \t")
		for i := 0; i < len(v); i++ {
			if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
				return nil, fmt.Errorf("header %q has a control character", k)
			}
		}
		ck := http.CanonicalHeaderKey(k)
		if dropped[ck] || strings.HasPrefix(ck, "Proxy-") {
			continue
		}
		h[ck] = []string{v}
	}
	return h, nil
}

// encodeHeaders is WAGI's encoding of response headers: "name:value\n"
// per value, names in lower case; values with control characters are
// left out (WAGI failed the whole call on them).
func encodeHeaders(h http.Header) string {
	names := make([]string, 0, len(h))
	for k := range h {
		names = append(names, k)
	}
	sort.Strings(names)
	var b strings.Builder
	for _, k := range names {
		lk := strings.ToLower(k)
	values:
		for _, v := range h[k] {
			for i := 0; i < len(v); i++ {
				if c := v[i]; (c < 0x20 && c != '\t') || c == 0x7f {
					continue values
				}
			}
			b.WriteString(lk)
			b.WriteByte(':')
			b.WriteString(v)
			b.WriteByte('\n')
		}
	}
	return b.String()
}

// redact is a URL as logged: without its query and fragment (API keys
// travel there), and whether it had a query.
func redact(raw string) (string, bool) {
	u, err := url.Parse(raw)
	if err != nil {
		return strconv.Quote(truncate(raw)), false
	}
	q := u.RawQuery != "" || u.ForceQuery
	u.RawQuery, u.Fragment, u.RawFragment, u.ForceQuery = "", "", "", false
	u.User = nil
	return truncate(u.String()), q
}

func truncate(s string) string {
	if len(s) > 256 {
		return s[:256] + "..."
	}
	return s
}
