package wagi

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseRoute(t *testing.T) {
	tests := []struct {
		name     string
		pattern  string
		wantErr  string
		wildcard bool
	}{
		{name: "an exact route parses", pattern: "/foo"},
		{name: "the root route parses", pattern: "/"},
		{name: "an exact route with a trailing slash parses", pattern: "/foo/"},
		{name: "a wildcard route parses", pattern: "/foo/...", wildcard: true},
		{name: "the catch-all route parses", pattern: "/...", wildcard: true},
		{name: "a percent-encoded route parses", pattern: "/a%20b/...", wildcard: true},
		{name: "an empty route is rejected", pattern: "", wantErr: "empty"},
		{name: "a route without a leading slash is rejected", pattern: "foo", wantErr: `must start with "/"`},
		{name: "a route with a query is rejected", pattern: "/foo?x=1", wantErr: `'?' is not allowed`},
		{name: "a route with a fragment is rejected", pattern: "/foo#x", wantErr: `'#' is not allowed`},
		{name: "a route with a space is rejected", pattern: "/foo bar", wantErr: "white space"},
		{name: "a route with a control character is rejected", pattern: "/foo\x01", wantErr: "control character"},
		{name: "a wildcard in the middle is rejected", pattern: "/foo/.../bar", wantErr: "only as the last segment"},
		{name: "two wildcards are rejected", pattern: "/foo/.../...", wantErr: "only as the last segment"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRoute(tt.pattern)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRoute(%q) error = %v, want one containing %q", tt.pattern, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseRoute(%q): %v", tt.pattern, err)
			}
			if r.Pattern != tt.pattern || r.String() != tt.pattern {
				t.Errorf("Pattern = %q, want %q", r.Pattern, tt.pattern)
			}
			if r.Wildcard() != tt.wildcard {
				t.Errorf("Wildcard() = %v, want %v", r.Wildcard(), tt.wildcard)
			}
		})
	}
}

func TestRouteMatch(t *testing.T) {
	tests := []struct {
		name           string
		pattern        string
		path           string
		wantOK         bool
		wantScriptName string
		wantPathInfo   string
	}{
		{name: "an exact route matches its own path", pattern: "/foo", path: "/foo", wantOK: true, wantScriptName: "/foo"},
		{name: "an exact route does not match a trailing slash", pattern: "/foo", path: "/foo/"},
		{name: "an exact route does not match a sub-path", pattern: "/foo", path: "/foo/bar"},
		{name: "an exact route does not match a longer name", pattern: "/foo", path: "/foobar"},
		{name: "an exact route with a trailing slash needs the slash", pattern: "/foo/", path: "/foo"},
		{name: "an exact route with a trailing slash matches it", pattern: "/foo/", path: "/foo/", wantOK: true, wantScriptName: "/foo/"},
		{name: "the root route matches only the root", pattern: "/", path: "/", wantOK: true, wantScriptName: "/"},
		{name: "the root route does not match below it", pattern: "/", path: "/x"},
		{name: "a wildcard matches its bare prefix", pattern: "/foo/...", path: "/foo", wantOK: true, wantScriptName: "/foo"},
		{name: "a wildcard matches its prefix with a slash", pattern: "/foo/...", path: "/foo/", wantOK: true, wantScriptName: "/foo", wantPathInfo: "/"},
		{name: "a wildcard matches a sub-path", pattern: "/foo/...", path: "/foo/x", wantOK: true, wantScriptName: "/foo", wantPathInfo: "/x"},
		{name: "a wildcard matches a deep sub-path", pattern: "/foo/...", path: "/foo/x/y/z", wantOK: true, wantScriptName: "/foo", wantPathInfo: "/x/y/z"},
		{name: "a wildcard does not match a longer name", pattern: "/foo/...", path: "/foobar"},
		{name: "a wildcard does not match a shorter path", pattern: "/foo/...", path: "/fo"},
		{name: "a wildcard does not match another tree", pattern: "/foo/...", path: "/bar/foo"},
		{name: "the catch-all matches the root", pattern: "/...", path: "/", wantOK: true, wantScriptName: "/", wantPathInfo: "/"},
		{name: "the catch-all matches anything", pattern: "/...", path: "/a/b", wantOK: true, wantScriptName: "/", wantPathInfo: "/a/b"},
		{name: "matching is on the raw percent-encoded path", pattern: "/path/...", path: "/path/a%3bb", wantOK: true, wantScriptName: "/path", wantPathInfo: "/a%3bb"},
		{name: "an encoded slash does not split segments", pattern: "/a/...", path: "/a%2Fb"},
		{name: "an encoded route matches the same encoding", pattern: "/a%20b", path: "/a%20b", wantOK: true, wantScriptName: "/a%20b"},
		{name: "an encoded route does not match the decoded path", pattern: "/a%20b", path: "/a b"},
		{name: "matching is case sensitive", pattern: "/Foo", path: "/foo"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r := MustParseRoute(tt.pattern)
			sn, pi, ok := r.Match(tt.path)
			if ok != tt.wantOK || sn != tt.wantScriptName || pi != tt.wantPathInfo {
				t.Errorf("Route(%q).Match(%q) = (%q, %q, %v), want (%q, %q, %v)",
					tt.pattern, tt.path, sn, pi, ok, tt.wantScriptName, tt.wantPathInfo, tt.wantOK)
			}
		})
	}
}

func TestZeroRouteMatchesNothing(t *testing.T) {
	if _, _, ok := (Route{}).Match("/"); ok {
		t.Error("the zero Route matched \"/\"")
	}
}

func TestRouteScriptName(t *testing.T) {
	tests := []struct {
		name, pattern, want string
	}{
		{name: "an exact route is its own script name", pattern: "/x", want: "/x"},
		{name: "a wildcard loses its suffix", pattern: "/x/...", want: "/x"},
		{name: "the catch-all is the root", pattern: "/...", want: "/"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := MustParseRoute(tt.pattern).ScriptName(); got != tt.want {
				t.Errorf("ScriptName() = %q, want %q", got, tt.want)
			}
		})
	}
}

func TestRouteJoin(t *testing.T) {
	tests := []struct {
		name, parent, sub, want, wantErr string
	}{
		{name: "an exact sub-route is appended to an exact parent", parent: "/parent", sub: "/x", want: "/parent/x"},
		{name: "a wildcard parent loses its suffix", parent: "/parent/...", sub: "/x", want: "/parent/x"},
		{name: "a wildcard sub-route stays a wildcard", parent: "/parent", sub: "/x/...", want: "/parent/x/..."},
		{name: "a wildcard sub-route under a wildcard parent stays a wildcard", parent: "/parent/...", sub: "/x/...", want: "/parent/x/..."},
		{name: "the catch-all sub-route covers the parent's tree", parent: "/parent", sub: "/...", want: "/parent/..."},
		{name: "a sub-route under the catch-all parent is rooted", parent: "/...", sub: "/x", want: "/x"},
		{name: "a sub-route under the root parent is rooted", parent: "/", sub: "/x", want: "/x"},
		{name: "a parent with a trailing slash gives no double slash", parent: "/parent/", sub: "/x", want: "/parent/x"},
		{name: "the root sub-route gives the parent with a slash", parent: "/parent", sub: "/", want: "/parent/"},
		{name: "a sub-route without a leading slash is accepted", parent: "/parent", sub: "x", want: "/parent/x"},
		{name: "an empty sub-route is rejected", parent: "/parent", sub: "", wantErr: "empty"},
		{name: "a sub-route with a misplaced wildcard is rejected", parent: "/parent", sub: "/.../x", wantErr: "last segment"},
		{name: "a sub-route with a space is rejected", parent: "/parent", sub: "/a b", wantErr: "white space"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := MustParseRoute(tt.parent).Join(tt.sub)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("Join(%q) error = %v, want one containing %q", tt.sub, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Join(%q): %v", tt.sub, err)
			}
			if got.Pattern != tt.want {
				t.Errorf("%q.Join(%q) = %q, want %q", tt.parent, tt.sub, got.Pattern, tt.want)
			}
		})
	}
}

func TestJoinedRouteMatchesWithTheFullScriptName(t *testing.T) {
	r, err := MustParseRoute("/parent/...").Join("/x/...")
	if err != nil {
		t.Fatal(err)
	}
	sn, pi, ok := r.Match("/parent/x/y")
	if !ok || sn != "/parent/x" || pi != "/y" {
		t.Errorf("Match = (%q, %q, %v), want (\"/parent/x\", \"/y\", true)", sn, pi, ok)
	}
}

func TestParseRoutesOutput(t *testing.T) {
	tests := []struct {
		name    string
		out     string
		want    []SubRoute
		wantErr string
	}{
		{name: "one line gives one sub-route", out: "/hello hello\n", want: []SubRoute{{"/hello", "hello"}}},
		{name: "lines keep their printed order", out: "/hello hello\n/goodbye/... farewell\n",
			want: []SubRoute{{"/hello", "hello"}, {"/goodbye/...", "farewell"}}},
		{name: "a last line without a newline counts", out: "/a a\n/b b", want: []SubRoute{{"/a", "a"}, {"/b", "b"}}},
		{name: "blank lines are ignored", out: "\n/a a\n\n  \n/b b\n\n", want: []SubRoute{{"/a", "a"}, {"/b", "b"}}},
		{name: "CRLF line ends are accepted", out: "/a a\r\n/b b\r\n", want: []SubRoute{{"/a", "a"}, {"/b", "b"}}},
		{name: "extra white space between fields is accepted", out: "  /a \t a  \n", want: []SubRoute{{"/a", "a"}}},
		{name: "empty output gives no sub-routes", out: "", want: nil},
		{name: "a line with one field is an error naming the line", out: "/a a\n/b\n", wantErr: "line 2"},
		{name: "a line with three fields is an error naming the line", out: "/a a b\n", wantErr: "line 1"},
		{name: "a bad pattern is an error naming the line", out: "/ok ok\n\n/x/.../y y\n", wantErr: "line 3"},
		{name: "a control character is an error", out: "/a a\x00\n", wantErr: "control character"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseRoutesOutput([]byte(tt.out))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("got %q, want %q", got, tt.want)
			}
		})
	}
}

func TestTableLookup(t *testing.T) {
	var tab Table[string]
	for _, e := range []struct{ pattern, v string }{
		{"/healthz", "health"},
		{"/foo/bar", "foobar"},
		{"/foo/...", "foo"},
		{"/foo/baz", "never: shadowed by /foo/..."},
		{"/...", "all"},
	} {
		tab.Add(MustParseRoute(e.pattern), e.v)
	}
	tests := []struct {
		name, path, want, wantScriptName, wantPathInfo, wantRoute string
	}{
		{name: "an exact route wins when it comes first", path: "/foo/bar", want: "foobar", wantScriptName: "/foo/bar", wantRoute: "/foo/bar"},
		{name: "the first matching wildcard wins over a later exact route", path: "/foo/baz", want: "foo", wantScriptName: "/foo", wantPathInfo: "/baz", wantRoute: "/foo/..."},
		{name: "a path no earlier route matches falls to the catch-all", path: "/other", want: "all", wantScriptName: "/", wantPathInfo: "/other", wantRoute: "/..."},
		{name: "the built-in style exact route matches", path: "/healthz", want: "health", wantScriptName: "/healthz", wantRoute: "/healthz"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v, sn, pi, r, ok := tab.Lookup(tt.path)
			if !ok || v != tt.want || sn != tt.wantScriptName || pi != tt.wantPathInfo || r.Pattern != tt.wantRoute {
				t.Errorf("Lookup(%q) = (%q, %q, %q, %q, %v), want (%q, %q, %q, %q, true)",
					tt.path, v, sn, pi, r.Pattern, ok, tt.want, tt.wantScriptName, tt.wantPathInfo, tt.wantRoute)
			}
		})
	}
}

func TestEmptyTableFindsNothing(t *testing.T) {
	var tab Table[int]
	if v, _, _, _, ok := tab.Lookup("/"); ok || v != 0 {
		t.Errorf("Lookup on an empty table = (%v, %v), want (0, false)", v, ok)
	}
	if tab.Len() != 0 {
		t.Errorf("Len() = %d, want 0", tab.Len())
	}
}

func TestTableAllYieldsInOrder(t *testing.T) {
	var tab Table[int]
	for i, p := range []string{"/a", "/b/...", "/..."} {
		tab.Add(MustParseRoute(p), i)
	}
	var got []string
	for r, v := range tab.All() {
		got = append(got, r.Pattern)
		if v != len(got)-1 {
			t.Errorf("value of %s = %d, want %d", r.Pattern, v, len(got)-1)
		}
		if len(got) == 2 {
			break
		}
	}
	if want := []string{"/a", "/b/..."}; !reflect.DeepEqual(got, want) {
		t.Errorf("All() = %q, want %q (stopping early)", got, want)
	}
}
