package spinimport

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
)

// appDir makes an application directory: a core module, a component,
// static/ with a file, data/ and a lone file at the top.
func appDir(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"hello.wasm":      "\x00asm\x01\x00\x00\x00",
		"component.wasm":  "\x00asm\x0d\x00\x01\x00",
		"static/a.txt":    "a",
		"static/sub/b.js": "b",
		"data/x.json":     "{}",
		"index.html":      "<p>",
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

const v1Head = `spin_manifest_version = "1"
name = "app"
version = "1.0.0"
trigger = { type = "http", base = "/" }
`

const v2Head = `spin_manifest_version = 2
[application]
name = "app"
`

func TestConversion(t *testing.T) {
	tests := []struct {
		name     string
		manifest string
		modules  int
		want     []string // lines (substrings) of the config, {{app}} is the app dir
		notes    []string // substrings of the notes, each must appear
		noNotes  bool     // and there must be none
	}{
		{
			name: "a v1 WAGI component becomes a module with everything it sets",
			manifest: v1Head + `
[[component]]
id = "hello"
source = "hello.wasm"
environment = { GREETING = "hi", "ODD KEY" = "x\"y" }
files = ["static"]
allowed_http_hosts = ["example.com:8080"]
[component.trigger]
route = "/hello/..."
executor = { type = "wagi", argv = "${SCRIPT_NAME} -v ${ARGS}", entrypoint = "main" }
`,
			modules: 1,
			want: []string{
				`healthz = false`,
				`# component "hello"`,
				`route = "/hello/..."`,
				`module = "{{app}}/hello.wasm"`,
				`entrypoint = "main"`,
				`argv = "${SCRIPT_NAME} -v ${ARGS}"`,
				`volumes = { "/static" = "{{app}}/static:ro" }`,
				`environment = { GREETING = "hi", "ODD KEY" = "x\"y" }`,
				`allowed_hosts = ["http://example.com:8080", "https://example.com:8080"]`,
			},
			noNotes: true,
		},
		{
			name: "Spin's default argv is written out, since WAGI's default differs",
			manifest: v1Head + `
[[component]]
id = "hello"
source = "hello.wasm"
[component.trigger]
route = "/"
executor = { type = "wagi" }
`,
			modules: 1,
			want:    []string{`route = "/"`, `argv = "${SCRIPT_NAME} ${ARGS}"`},
			noNotes: true,
		},
		{
			name: "the v1 base is prepended as Spin does",
			manifest: strings.Replace(v1Head, `base = "/"`, `base = "/api/"`, 1) + `
[[component]]
id = "hello"
source = "hello.wasm"
[component.trigger]
route = "/x/"
executor = { type = "wagi" }
`,
			modules: 1,
			want:    []string{`route = "/api/x"`},
		},
		{
			name: "a v1 component for Spin's HTTP executor is not runnable here",
			manifest: v1Head + `
[[component]]
id = "sdk"
source = "hello.wasm"
[component.trigger]
route = "/sdk"
`,
			notes: []string{`component "sdk": not converted: uses Spin's HTTP executor`},
		},
		{
			name: "a v1 redis application has nothing to convert",
			manifest: `spin_manifest_version = "1"
name = "r"
trigger = { type = "redis", address = "redis://x" }
[[component]]
id = "sub"
source = "hello.wasm"
[component.trigger]
channel = "c"
`,
			notes: []string{`trigger: ignored: address`, `component "sub": not converted: the application's trigger is "redis"`},
		},
		{
			name: "v1 features without an equivalent are each reported",
			manifest: v1Head + `
[variables]
x = { default = "1" }
[[component]]
id = "hello"
source = "hello.wasm"
config = { k = "{{ x }}" }
key_value_stores = ["default"]
sqlite_databases = ["default"]
ai_models = ["llama2-chat"]
allowed_outbound_hosts = ["redis://cache:6379"]
build = { command = "make" }
[component.trigger]
route = "/hello"
executor = { type = "wagi" }
`,
			modules: 1,
			notes: []string{
				`manifest: ignored: variables`,
				`component "hello": ignored: config`,
				`ignored: key_value_stores`,
				`ignored: sqlite_databases`,
				`ignored: ai_models`,
				`ignored: build: the build command is not run`,
				`allowed_outbound_hosts "redis://cache:6379": only outbound HTTP`,
			},
		},
		{
			name: "a v2 trigger naming a component becomes a module",
			manifest: v2Head + `
[[trigger.http]]
route = "/api/..."
component = "api"
executor = { type = "wagi" }

[component.api]
source = "hello.wasm"
files = [{ source = "data", destination = "/var/data" }, "static/**/*"]
environment = { MODE = "prod" }
allowed_outbound_hosts = ["https://api.example.com", "http://localhost:3000", "*://any-scheme.example.com:*", "https://*.example.com", "mysql://db", "https://{{ host }}", "http://self"]
`,
			modules: 1,
			want: []string{
				`# trigger.http #1 (route "/api/...") component "api"`,
				`route = "/api/..."`,
				`volumes = { "/var/data" = "{{app}}/data:ro", "/static" = "{{app}}/static:ro" }`,
				`environment = { MODE = "prod" }`,
				`allowed_hosts = ["https://api.example.com", "http://localhost:3000", "http://any-scheme.example.com", "https://any-scheme.example.com", "https://*.example.com"]`,
			},
			notes: []string{
				`"*://any-scheme.example.com:*": any port has no equivalent`,
				`"mysql://db": only outbound HTTP`,
				`"https://{{ host }}": templates`,
				`"http://self": service chaining`,
			},
		},
		{
			name: "a v2 inline component converts too",
			manifest: v2Head + `
[[trigger.http]]
route = "/inline"
component = { source = "hello.wasm", environment = { A = "1" } }
executor = { type = "wagi", argv = "${SCRIPT_NAME}" }
`,
			modules: 1,
			want:    []string{`# trigger.http #1 (route "/inline") (inline component)`, `environment = { A = "1" }`, `argv = "${SCRIPT_NAME}"`},
			noNotes: true,
		},
		{
			name: "a { url, digest } source becomes module = URL and digest",
			manifest: v2Head + `
[[trigger.http]]
route = "/remote"
component = "remote"
executor = { type = "wagi" }
[component.remote]
source = { url = "https://example.com/hello.wasm", digest = "sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881" }
`,
			modules: 1,
			want:    []string{`module = "https://example.com/hello.wasm"`, `digest = "sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"`},
		},
		{
			name: "a registry source is not supported",
			manifest: v2Head + `
[[trigger.http]]
route = "/pkg"
component = "pkg"
executor = { type = "wagi" }
[component.pkg]
source = { package = "example:hello", version = "1.0.0" }
`,
			notes: []string{`not converted: source is the registry package "example:hello"`},
		},
		{
			name: "a v2 component for Spin's HTTP executor is not runnable here",
			manifest: v2Head + `
[[trigger.http]]
route = "/..."
component = "web"
[component.web]
source = "hello.wasm"
`,
			notes: []string{`trigger.http #1 (route "/...") component "web": not converted: uses Spin's HTTP executor`},
		},
		{
			name: "named route segments have no equivalent",
			manifest: v2Head + `
[[trigger.http]]
route = "/users/:id"
component = { source = "hello.wasm" }
executor = { type = "wagi" }
`,
			notes: []string{`route "/users/:id": named segments`},
		},
		{
			name: "a trailing /* is Spin's other spelling of /...",
			manifest: v2Head + `
[[trigger.http]]
route = "/files/*"
component = { source = "hello.wasm" }
executor = { type = "wagi" }
`,
			modules: 1,
			want:    []string{`route = "/files/..."`},
		},
		{
			name: "a private endpoint is service chaining only",
			manifest: v2Head + `
[[trigger.http]]
route = { private = true }
component = { source = "hello.wasm" }
executor = { type = "wagi" }
`,
			notes: []string{`not converted: a private endpoint`},
		},
		{
			name: "a static response is left to the web server",
			manifest: v2Head + `
[[trigger.http]]
route = "/static-response"
static_response = { status_code = 404 }
`,
			notes: []string{`not converted: static_response`},
		},
		{
			name: "a Wasm component as source is refused",
			manifest: v2Head + `
[[trigger.http]]
route = "/c"
component = { source = "component.wasm" }
executor = { type = "wagi" }
`,
			notes: []string{`is a WebAssembly component`},
		},
		{
			name: "a glob is served as its base directory, with a warning",
			manifest: v2Head + `
[[trigger.http]]
route = "/g"
component = { source = "hello.wasm", files = ["static/*.txt", "data/x.json"] }
executor = { type = "wagi" }
`,
			modules: 1,
			want:    []string{`volumes = { "/static" = "{{app}}/static:ro", "/data" = "{{app}}/data:ro" }`},
			notes:   []string{`warning: files: "static/*.txt" is served as the whole directory "static"`, `warning: files: "data/x.json" is served as the whole directory "data"`},
		},
		{
			name: "a pattern at the top of the application is refused",
			manifest: v2Head + `
[[trigger.http]]
route = "/top"
component = { source = "hello.wasm", files = ["*.html"] }
executor = { type = "wagi" }
`,
			notes: []string{`files: "*.html" would need the whole application directory`},
		},
		{
			name: "a single file at the top of the application is refused",
			manifest: v2Head + `
[[trigger.http]]
route = "/top"
component = { source = "hello.wasm", files = ["index.html"] }
executor = { type = "wagi" }
`,
			notes: []string{`files: "index.html" would need the whole application directory`},
		},
		{
			name: "a single-file placement is refused",
			manifest: v2Head + `
[[trigger.http]]
route = "/one"
component = { source = "hello.wasm", files = [{ source = "index.html", destination = "/i.html" }] }
executor = { type = "wagi" }
`,
			notes: []string{`{ source = "index.html" } is a single file`},
		},
		{
			name: "exclude_files cannot be honoured and is refused",
			manifest: v2Head + `
[[trigger.http]]
route = "/ex"
component = { source = "hello.wasm", files = ["static"], exclude_files = ["static/secret"] }
executor = { type = "wagi" }
`,
			notes: []string{`exclude_files ["static/secret"] cannot be honoured`},
		},
		{
			name: "non-HTTP triggers and unused components are reported, HTTP WAGI ones still convert",
			manifest: v2Head + `
[application.trigger.redis]
address = "redis://localhost"
[variables]
x = { default = "1" }
[[trigger.redis]]
channel = "c"
component = "sub"
[[trigger.http]]
route = "/ok"
component = "ok"
executor = { type = "wagi" }
[component.sub]
source = "hello.wasm"
[component.ok]
source = "hello.wasm"
variables = { v = "{{ x }}" }
[component.orphan]
source = "hello.wasm"
`,
			modules: 1,
			want:    []string{`route = "/ok"`},
			notes: []string{
				`application.trigger.redis: ignored`,
				`manifest: ignored: variables`,
				`trigger.redis #1: not converted: redis triggers are not HTTP requests`,
				`component "ok": ignored: variables`,
				`component "orphan": not converted: no trigger uses it`,
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := appDir(t)
			manifest := filepath.Join(dir, "spin.toml")
			res, err := ConvertBytes([]byte(tt.manifest), manifest, Options{})
			if err != nil {
				t.Fatal(err)
			}
			out := string(res.Config)
			var notes []string
			for _, n := range res.Notes {
				notes = append(notes, n.String())
			}
			allNotes := strings.Join(notes, "\n")
			if res.Modules != tt.modules {
				t.Errorf("%d modules, want %d\nconfig:\n%s\nnotes:\n%s", res.Modules, tt.modules, out, allNotes)
			}
			for _, w := range tt.want {
				w = strings.ReplaceAll(w, "{{app}}", dir)
				if !strings.Contains(out, w+"\n") {
					t.Errorf("config lacks the line %q:\n%s", w, out)
				}
			}
			for _, w := range tt.notes {
				if !strings.Contains(allNotes, w) {
					t.Errorf("notes lack %q:\n%s", w, allNotes)
				}
			}
			if tt.noNotes && len(notes) > 0 {
				t.Errorf("unexpected notes:\n%s", allNotes)
			}
			// What import writes is a config wagi-fcgi loads.
			cfg, err := config.Parse(res.Config, "out.toml", dir)
			if err != nil {
				t.Fatalf("the config does not load: %v\n%s", err, out)
			}
			if len(cfg.Modules) != tt.modules || cfg.Healthz {
				t.Errorf("loaded %d modules, healthz %v", len(cfg.Modules), cfg.Healthz)
			}
		})
	}
}

// A hostile manifest must not turn into a config that mounts host
// directories outside the application: a placement's source is held to
// the same rule as a path entry, and no link is followed out of it.
func TestFilesOutsideTheApplicationDirectoryAreRefused(t *testing.T) {
	outside := t.TempDir()
	tests := []struct{ name, files, note string }{
		{"a placement climbing out with ..", `[{ source = "../../etc", destination = "/etc" }]`, "not a path inside the application directory"},
		{"a placement naming an absolute path", `[{ source = "/etc", destination = "/etc" }]`, "not a path inside the application directory"},
		{"a placement of the application directory itself", `[{ source = ".", destination = "/app" }]`, "not a path inside the application directory"},
		{"a directory entry that is a link out", `["assets"]`, "symbolic link"},
		{"a glob under a link out", `["assets/**/*"]`, "symbolic link"},
		{"a placement whose source is a link out", `[{ source = "assets", destination = "/a" }]`, "symbolic link"},
		{"a directory inside a link out", `["assets/inner"]`, "symbolic link"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := appDir(t)
			if err := os.MkdirAll(filepath.Join(outside, "inner"), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, filepath.Join(dir, "assets")); err != nil {
				t.Fatal(err)
			}
			manifest := v2Head + `
[[trigger.http]]
route = "/x"
component = { source = "hello.wasm", files = ` + tt.files + ` }
executor = { type = "wagi" }
`
			res, err := ConvertBytes([]byte(manifest), filepath.Join(dir, "spin.toml"), Options{})
			if err != nil {
				t.Fatal(err)
			}
			var notes []string
			for _, n := range res.Notes {
				notes = append(notes, n.String())
			}
			if res.Modules != 0 || strings.Contains(string(res.Config), "volumes") {
				t.Errorf("converted with the volume anyway:\n%s", res.Config)
			}
			if all := strings.Join(notes, "\n"); !strings.Contains(all, tt.note) {
				t.Errorf("notes lack %q:\n%s", tt.note, all)
			}
		})
	}
}

// A source that is a FIFO (an unpacked archive can hold one) is reported,
// not waited on: import must finish.
func TestASourceThatIsAFIFOIsReportedNotWaitedOn(t *testing.T) {
	dir := appDir(t)
	if err := syscall.Mkfifo(filepath.Join(dir, "fifo.wasm"), 0o600); err != nil {
		t.Fatal(err)
	}
	manifest := v2Head + `
[[trigger.http]]
route = "/x"
component = { source = "fifo.wasm" }
executor = { type = "wagi" }
`
	done := make(chan *Result, 1)
	go func() {
		res, err := ConvertBytes([]byte(manifest), filepath.Join(dir, "spin.toml"), Options{})
		if err != nil {
			t.Error(err)
		}
		done <- res
	}()
	select {
	case res := <-done:
		var notes []string
		for _, n := range res.Notes {
			notes = append(notes, n.String())
		}
		if all := strings.Join(notes, "\n"); !strings.Contains(all, "not a regular file") {
			t.Errorf("notes do not say the source is not a regular file:\n%s", all)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("import still waiting on the FIFO after 20s")
	}
}

// The egress proxy refuses loopback, private, link-local and metadata
// addresses unless allowed_hosts names them: an imported manifest that
// names one (the cloud metadata service, the kubo API) is converted as
// Spin would run it, but never silently.
func TestOutboundHostsOnThisMachineOrAPrivateNetworkAreWarnedOf(t *testing.T) {
	for _, tt := range []struct {
		host string
		warn bool
	}{
		{"http://169.254.169.254", true},
		{"http://127.0.0.1:5001", true},
		{"https://localhost:8443", true},
		{"http://10.1.2.3", true},
		{"https://[fd00::1]:443", true},
		{"https://api.example.com", false},
	} {
		t.Run(tt.host, func(t *testing.T) {
			dir := appDir(t)
			manifest := v2Head + `
[[trigger.http]]
route = "/x"
component = { source = "hello.wasm", allowed_outbound_hosts = ["` + tt.host + `"] }
executor = { type = "wagi" }
`
			res, err := ConvertBytes([]byte(manifest), filepath.Join(dir, "spin.toml"), Options{})
			if err != nil {
				t.Fatal(err)
			}
			if res.Modules != 1 || !strings.Contains(string(res.Config), tt.host) {
				t.Fatalf("not converted:\n%s", res.Config)
			}
			var warned bool
			for _, n := range res.Notes {
				warned = warned || n.Level == Warning && strings.Contains(n.Msg, "private network")
			}
			if warned != tt.warn {
				t.Errorf("warned %v, want %v: %v", warned, tt.warn, res.Notes)
			}
		})
	}
}

func TestModulesFollowSpinsRoutePrecedence(t *testing.T) {
	dir := appDir(t)
	trigger := func(route, id string) string {
		return "\n[[trigger.http]]\nroute = \"" + route + "\"\ncomponent = { source = \"hello.wasm\", environment = { ID = \"" + id + "\" } }\nexecutor = { type = \"wagi\" }\n"
	}
	manifest := v2Head + trigger("/...", "all") + trigger("/api/...", "api") + trigger("/api/v1/...", "v1") +
		trigger("/api/exact", "exact") + trigger("/dup", "first") + trigger("/dup", "second")
	res, err := ConvertBytes([]byte(manifest), filepath.Join(dir, "spin.toml"), Options{})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Parse(res.Config, "out.toml", dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range cfg.Modules {
		got = append(got, m.Route+"="+m.Environment["ID"])
	}
	// Exact routes first (in manifest order), then the longest prefix;
	// of the duplicates, the last (Spin's choice).
	want := []string{"/api/exact=exact", "/dup=second", "/api/v1/...=v1", "/api/...=api", "/...=all"}
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Errorf("modules in order %q, want %q", got, want)
	}
	var dup bool
	for _, n := range res.Notes {
		dup = dup || (n.Level == Skipped && strings.Contains(n.Msg, `route "/dup" is also the route of trigger.http #6`))
	}
	if !dup {
		t.Errorf("the shadowed duplicate is not reported: %v", res.Notes)
	}
}

func TestPathsAreRelativeToTheOutputFile(t *testing.T) {
	dir := appDir(t)
	res, err := ConvertBytes([]byte(v2Head+`
[[trigger.http]]
route = "/r"
component = { source = "hello.wasm", files = ["static"] }
executor = { type = "wagi" }
`), filepath.Join(dir, "spin.toml"), Options{OutDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{`module = "./hello.wasm"`, `volumes = { "/static" = "./static:ro" }`} {
		if !strings.Contains(string(res.Config), w) {
			t.Errorf("config lacks %q:\n%s", w, res.Config)
		}
	}
	cfg, err := config.Parse(res.Config, "out.toml", dir)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Modules[0].Module; got != filepath.Join(dir, "hello.wasm") {
		t.Errorf("module resolves to %s", got)
	}
}

func TestWhatIsNotASpinManifestIsAnError(t *testing.T) {
	tests := []struct{ name, manifest, want string }{
		{"no version", `name = "x"`, "no spin_manifest_version"},
		{"an unknown version", `spin_manifest_version = 3`, "only versions 1 and 2"},
		{"not TOML", `[[`, "not valid TOML"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ConvertBytes([]byte(tt.manifest), "/app/spin.toml", Options{})
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}
}
