package wagi

import (
	"bytes"
	"fmt"
	"strings"
)

// wildcardSuffix is what makes a route pattern match a whole subtree.
const wildcardSuffix = "/..."

// Route is a parsed route pattern.
//
// A pattern is either exact ("/foo" matches only "/foo") or a wildcard
// ending in "/..." ("/foo/..." matches "/foo", "/foo/" and "/foo/anything",
// never "/foobar"; "/..." matches everything). Matching is done on the raw,
// still percent-encoded request path, byte for byte.
//
// The zero Route matches nothing.
type Route struct {
	// Pattern is the pattern as written, "/..." included.
	Pattern string

	// prefix is Pattern without the "/..." suffix for a wildcard (""
	// for "/..."), and Pattern itself for an exact route.
	prefix   string
	wildcard bool
}

// ParseRoute parses and validates a route pattern.
//
// A pattern must start with "/", must not contain a query ('?'), a fragment
// ('#'), white space or control characters, and may contain a "..."
// segment only as its last segment, which makes it a wildcard.
func ParseRoute(pattern string) (Route, error) {
	if pattern == "" {
		return Route{}, fmt.Errorf("invalid route %q: empty", pattern)
	}
	if pattern[0] != '/' {
		return Route{}, fmt.Errorf("invalid route %q: must start with \"/\"", pattern)
	}
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; {
		case c <= ' ' || c == 0x7f:
			return Route{}, fmt.Errorf("invalid route %q: white space or control character at byte %d", pattern, i)
		case c == '?' || c == '#':
			return Route{}, fmt.Errorf("invalid route %q: %q is not allowed in a route (routes match the path only)", pattern, c)
		}
	}
	r := Route{Pattern: pattern, prefix: pattern}
	if strings.HasSuffix(pattern, wildcardSuffix) {
		r.wildcard = true
		r.prefix = strings.TrimSuffix(pattern, wildcardSuffix)
	}
	// "..." may appear only as the final segment.
	for _, seg := range strings.Split(r.prefix, "/") {
		if seg == "..." {
			return Route{}, fmt.Errorf("invalid route %q: \"...\" is allowed only as the last segment, as in \"/foo/...\"", pattern)
		}
	}
	return r, nil
}

// MustParseRoute is like ParseRoute but panics on an invalid pattern. It is
// meant for patterns that are constants in the program.
func MustParseRoute(pattern string) Route {
	r, err := ParseRoute(pattern)
	if err != nil {
		panic(err)
	}
	return r
}

// Wildcard reports whether the route ends in "/...".
func (r Route) Wildcard() bool { return r.wildcard }

// String returns the pattern as written.
func (r Route) String() string { return r.Pattern }

// ScriptName is the SCRIPT_NAME of a request matched by this route: the
// route itself for an exact route, the pattern without "/..." for a
// wildcard, and "/" for "/...".
func (r Route) ScriptName() string {
	if r.prefix == "" {
		return "/"
	}
	return r.prefix
}

// Match reports whether rawPath (the still percent-encoded request path,
// without the query) matches the route. On a match it also returns the
// SCRIPT_NAME and the raw (not decoded) rest of the path after it, which is
// "" for exact routes and for a wildcard matched exactly at its prefix.
//
// For the route "/..." the rest is the whole path and SCRIPT_NAME is "/",
// as in WAGI: "/a/b" gives ("/", "/a/b").
func (r Route) Match(rawPath string) (scriptName, rawPathInfo string, ok bool) {
	if r.Pattern == "" {
		return "", "", false
	}
	if !r.wildcard {
		if rawPath == r.prefix {
			return r.prefix, "", true
		}
		return "", "", false
	}
	p := r.prefix
	switch {
	case p == "":
		// "/..." matches every path; SCRIPT_NAME is "/".
		return "/", rawPath, true
	case rawPath == p:
		return p, "", true
	case len(rawPath) > len(p) && rawPath[len(p)] == '/' && rawPath[:len(p)] == p:
		return p, rawPath[len(p):], true
	}
	return "", "", false
}

// Join returns the route of a `_routes` sub-route printed by a module whose
// own route is r: "/parent" + "/x" gives "/parent/x", a wildcard parent
// loses its "/..." ("/parent/..." + "/x" gives "/parent/x"), and sub may
// itself end in "/..." ("/parent" + "/x/..." gives "/parent/x/..."; "/..."
// alone gives "/parent/..."). A sub pattern without its leading "/" is
// accepted, as WAGI did. Slashes are never doubled at the seam.
func (r Route) Join(sub string) (Route, error) {
	if r.Pattern == "" {
		return Route{}, fmt.Errorf("joining sub-route %q: parent route is empty", sub)
	}
	if sub == "" {
		return Route{}, fmt.Errorf("joining sub-route to %q: sub-route is empty", r.Pattern)
	}
	if _, err := ParseRoute("/" + strings.TrimPrefix(sub, "/")); err != nil {
		return Route{}, fmt.Errorf("joining sub-route to %q: %w", r.Pattern, err)
	}
	base := strings.TrimSuffix(r.prefix, "/")
	joined := base + "/" + strings.TrimPrefix(sub, "/")
	jr, err := ParseRoute(joined)
	if err != nil {
		return Route{}, fmt.Errorf("joining sub-route %q to %q: %w", sub, r.Pattern, err)
	}
	return jr, nil
}

// SubRoute is one line of a module's `_routes` output: a route pattern
// relative to the module's own route, and the export that serves it.
type SubRoute struct {
	Pattern string
	Export  string
}

// ParseRoutesOutput parses what a module's `_routes` export printed: one
// "<pattern> <export>" pair per line, separated by white space. Blank lines
// are ignored; lines end in "\n" or "\r\n". Output with no route lines at
// all gives no sub-routes and no error (WAGI refused empty output; nothing
// in the contract needs that). Any other line is an error naming it. The
// result is in printed order; the manager gives the last line the highest
// precedence.
func ParseRoutesOutput(out []byte) ([]SubRoute, error) {
	var subs []SubRoute
	lineNo := 0
	for len(out) > 0 {
		lineNo++
		var line []byte
		if i := bytes.IndexByte(out, '\n'); i >= 0 {
			line, out = out[:i], out[i+1:]
		} else {
			line, out = out, nil
		}
		line = bytes.TrimSuffix(line, []byte{'\r'})
		for i, c := range line {
			if (c < ' ' && c != '\t') || c == 0x7f {
				return nil, fmt.Errorf("_routes output line %d: control character at byte %d in %q", lineNo, i, line)
			}
		}
		fields := strings.Fields(string(line))
		if len(fields) == 0 {
			continue
		}
		if len(fields) != 2 {
			return nil, fmt.Errorf("_routes output line %d: want \"<pattern> <export>\", got %q", lineNo, line)
		}
		if _, err := ParseRoute("/" + strings.TrimPrefix(fields[0], "/")); err != nil {
			return nil, fmt.Errorf("_routes output line %d: %w", lineNo, err)
		}
		subs = append(subs, SubRoute{Pattern: fields[0], Export: fields[1]})
	}
	return subs, nil
}
