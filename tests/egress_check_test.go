package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestCheckAcceptsWAGIsOutboundHTTPImports: a module importing
// wasi_experimental_http passes `check` with no allowed_hosts (the
// functions are always provided), one importing them with another
// signature is named, and so is an allowed_hosts entry that is not a
// destination.
func TestCheckAcceptsWAGIsOutboundHTTPImports(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	cases := []struct {
		name   string
		config string
		code   int
		want   []string
	}{
		{"a module importing wasi_experimental_http loads with no allowed_hosts", `
state_dir = "{{dir}}/state"
[[module]]
route = "/x"
module = "{{mods}}/outbound.wasm"
`, 0, []string{"ok"}},
		{"a wasi_experimental_http import with another signature is named", `
state_dir = "{{dir}}/state"
[[module]]
route = "/x"
module = "{{mods}}/badhttpsig.wasm"
`, 1, []string{"badhttpsig.wasm", "wasi_experimental_http.req"}},
		{"an allowed_hosts entry without a scheme is named with its line", `
state_dir = "{{dir}}/state"
[[module]]
route = "/x"
module = "{{mods}}/outbound.wasm"
allowed_hosts = ["api.example.com"]
`, 1, []string{"wagi.toml:6", "allowed_hosts[0]", "scheme://host[:port]"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := filepath.Join(dir, "wagi.toml")
			if err := os.WriteFile(cfg, []byte(expand(t, tc.config, dir)), 0o644); err != nil {
				t.Fatal(err)
			}
			out, errs, code := runBin(t, bin, nil, "check", "-c", cfg)
			all := out + errs
			if code != tc.code {
				t.Fatalf("exit %d, want %d:\n%s", code, tc.code, all)
			}
			for _, w := range tc.want {
				if !strings.Contains(all, w) {
					t.Errorf("output lacks %q:\n%s", w, all)
				}
			}
		})
	}
}
