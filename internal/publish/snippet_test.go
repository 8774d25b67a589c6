package publish

import (
	"strings"
	"testing"

	"github.com/BurntSushi/toml"

	"github.com/wagi-fcgi/wagi-fcgi/config"
)

func TestSnippet(t *testing.T) {
	cfg := config.Default()
	cases := []struct {
		name string
		o    Options
		r    Result
		ipns string
		want []string
		err  string
	}{
		{name: "a module is served by its CID",
			o: Options{Path: "hello.wasm", Route: "/hello/..."}, r: Result{Bytes: 10},
			want: []string{"# cid:  bafkqaaa\n", "# path: /ipfs/bafkqaaa\n", "[[module]]\nroute = \"/hello/...\"\nmodule = \"ipfs://bafkqaaa\"\n"}},
		{name: "a module with a name is served by the name",
			o: Options{Path: "hello.wasm", Route: "/h", Name: "site"}, r: Result{Created: true}, ipns: "k51qzi5uqu5dexample",
			want: []string{"# ipns: /ipns/k51qzi5uqu5dexample (key \"site\", created now)\n", "module = \"/ipns/k51qzi5uqu5dexample\"\n"}},
		{name: "an entrypoint other than _start is kept",
			o: Options{Path: "m.wasm", Route: "/m", Entrypoint: "main"}, want: []string{"entrypoint = \"main\"\n"}},
		{name: "a directory is a volume of the named module",
			o: Options{Path: "site", Route: "/site/...", Mount: "/assets", Module: "static.wasm"}, r: Result{Volume: true, Entries: 3, Skipped: 2},
			want: []string{"in 3 entries (2 hidden left out)", "module = \"static.wasm\"\n", "volumes = { \"/assets\" = \"ipfs://bafkqaaa\" }\n"}},
		{name: "a directory with a name is mounted by the name",
			o: Options{Path: "site", Route: "/...", Mount: "/assets", Module: "static.wasm", Name: "site"}, r: Result{Volume: true}, ipns: "k51qzi5uqu5dexample",
			want: []string{"# cid:  bafkqaaa\n", "volumes = { \"/assets\" = \"/ipns/k51qzi5uqu5dexample\" }\n"}},
		{name: "a directory without a module gets a placeholder that says so",
			o: Options{Path: "site", Route: "/...", Mount: "/assets"}, r: Result{Volume: true},
			want: []string{"module = \"module.wasm\"  # the module that reads /assets: replace with its reference\n"}},
		{name: "quotes and control characters in a route stay inside the string",
			o: Options{Path: "x\ny.wasm", Route: "/a\"b\\c"}, want: []string{"route = \"/a\\\"b\\\\c\"\n", "module x?y.wasm,"}},
		{name: "a mount path the config would refuse is refused",
			o: Options{Path: "site", Route: "/...", Mount: "assets"}, r: Result{Volume: true}, err: "guest path must be absolute"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.o.Config = cfg
			s, err := snippet(tc.o, &tc.r, "bafkqaaa", tc.ipns)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("got %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(s, w) {
					t.Errorf("snippet lacks %q:\n%s", w, s)
				}
			}
			var doc struct{ Module []map[string]any }
			if _, err := toml.Decode(s, &doc); err != nil || len(doc.Module) != 1 || doc.Module[0]["route"] != tc.o.Route {
				t.Fatalf("decoded %+v, %v, from:\n%s", doc, err, s)
			}
		})
	}
}

func TestDefaultRoute(t *testing.T) {
	cases := []struct{ name, path, want string }{
		{"a module's route is its name", "dir/hello.wasm", "/hello/..."},
		{"a text module's too", "hello.wat", "/hello/..."},
		{"a directory's route is its name", "/srv/site/", "/site/..."},
		{"a name with odd characters gives the catch-all route", "my page.wasm", "/..."},
		{"a hidden name gives the catch-all route", ".x.wasm", "/..."},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := defaultRoute(tc.path); got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

func TestPinNameSaysWhoPinned(t *testing.T) {
	if got := pinName("/a/b/hello.wasm"); got != "wagi-fcgi publish hello.wasm" {
		t.Fatalf("got %q", got)
	}
	if got := pinName("x\x00y" + strings.Repeat("z", 100)); strings.ContainsRune(got, 0) || len(got) > len(PinPrefix)+1+64 {
		t.Fatalf("got %q", got)
	}
}
