package tests

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// The Spin manifests of one application, in both versions. env.wasm dumps
// argv and environ; files.wasm reads the file named in its query.
const spinV1Manifest = `spin_manifest_version = "1"
name = "spin-app"
version = "0.1.0"
trigger = { type = "http", base = "/v1" }

[[component]]
id = "env"
source = "modules/env.wasm"
environment = { FROM_SPIN = "v1 manifest" }
[component.trigger]
route = "/env/..."
executor = { type = "wagi" }

[[component]]
id = "files"
source = "modules/files.wasm"
files = ["static"]
[component.trigger]
route = "/files"
executor = { type = "wagi", argv = "${SCRIPT_NAME} ${ARGS}" }

[[component]]
id = "sdk"
source = "modules/env.wasm"
[component.trigger]
route = "/sdk"
`

const spinV2Manifest = `spin_manifest_version = 2

[application]
name = "spin-app"
version = "0.2.0"

[[trigger.http]]
route = "/v2/env/..."
component = "env"
executor = { type = "wagi" }

[[trigger.http]]
route = "/v2/files"
component = "files"
executor = { type = "wagi", argv = "${SCRIPT_NAME} ${ARGS}" }

[[trigger.http]]
route = "/v2/sdk"
component = "sdk"

[component.env]
source = "modules/env.wasm"
environment = { FROM_SPIN = "v2 manifest" }

[component.files]
source = "modules/files.wasm"
files = [{ source = "static", destination = "/assets" }]
key_value_stores = ["default"]

[component.sdk]
source = "modules/env.wasm"
`

func TestImportedSpinAppsServeBehindNginx(t *testing.T) {
	root := t.TempDir()
	bin := buildBinary(t, root)
	app := filepath.Join(root, "app")
	mods := testenv.Modules(t)
	for _, d := range []string{"modules", "static"} {
		if err := os.MkdirAll(filepath.Join(app, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	copyFile(t, filepath.Join(mods, "env.wasm"), filepath.Join(app, "modules/env.wasm"))
	copyFile(t, filepath.Join(mods, "files.wasm"), filepath.Join(app, "modules/files.wasm"))
	for name, content := range map[string]string{
		"static/hello.txt": "from spin files\n",
		"spin-v1.toml":     spinV1Manifest,
		"spin.toml":        spinV2Manifest,
	} {
		if err := os.WriteFile(filepath.Join(app, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}

	versions := []struct {
		name, manifest string
		toFile         bool // -o FILE (relative paths) or stdout (absolute)
		prefix, value  string
		filesPath      string // where the module sees static/hello.txt
		reported       []string
	}{
		{"version 1", "spin-v1.toml", true, "/v1", "v1 manifest", "/static/hello.txt",
			[]string{`component "sdk": not converted: uses Spin's HTTP executor`}},
		{"version 2", "spin.toml", false, "/v2", "v2 manifest", "/assets/hello.txt",
			[]string{`component "sdk": not converted: uses Spin's HTTP executor`, `component "files"`, `ignored: key_value_stores`}},
	}
	for _, v := range versions {
		t.Run(v.name, func(t *testing.T) {
			dir := filepath.Join(root, strings.ReplaceAll(v.name, " ", ""))
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			args := []string{"import", filepath.Join(app, v.manifest)}
			out := filepath.Join(dir, "imported.toml")
			if v.toFile {
				args = []string{"import", "-o", out, filepath.Join(app, v.manifest)}
			}
			stdout, stderr, code := runBin(t, bin, nil, args...)
			if code != 0 {
				t.Fatalf("import: exit %d\n%s", code, stderr)
			}
			for _, r := range v.reported {
				if !strings.Contains(stderr, r) {
					t.Errorf("import does not report %q:\n%s", r, stderr)
				}
			}
			if !strings.Contains(stderr, "2 module(s) converted") {
				t.Errorf("import does not count 2 modules:\n%s", stderr)
			}
			imported := stdout
			if v.toFile {
				if stdout != "" {
					t.Errorf("import -o wrote to stdout too: %q", stdout)
				}
				b, err := os.ReadFile(out)
				if err != nil {
					t.Fatal(err)
				}
				imported = string(b)
				if !strings.Contains(imported, `module = "../app/modules/env.wasm"`) {
					t.Errorf("-o does not write paths relative to the output file:\n%s", imported)
				}
			} else if !strings.Contains(imported, `module = "`+filepath.Join(app, "modules/env.wasm")+`"`) {
				t.Errorf("stdout does not get absolute paths:\n%s", imported)
			}
			// Top-level keys go before the imported config's tables, [pool]
			// after them.
			full := "listen = \"unix:{{dir}}/wagi.sock\"\nstate_dir = \"{{dir}}/state\"\n" + imported + "\n[pool]\nchildren = 1\n"
			cfgPath := filepath.Join(dir, "wagi.toml")
			if err := os.WriteFile(cfgPath, []byte(expand(t, full, dir)), 0o644); err != nil {
				t.Fatal(err)
			}
			makeReachable(t, dir)
			if stdout, stderr, code := runBin(t, bin, nil, "check", "-c", cfgPath); code != 0 {
				t.Fatalf("check on the imported config: exit %d\n%s%s\nconfig:\n%s", code, stdout, stderr, full)
			}
			w := startWagi(t, bin, dir, full)
			n := startNginx(t, dir, w.sock)
			c := newClient(t, n.base)

			r := c.get(v.prefix + "/env/deeper?a=1&b=2")
			if r.status != 200 {
				t.Fatalf("env route: %d %s\n%s", r.status, r.body, w.log)
			}
			argv, env := parseEnvOutput(t, r.body)
			if env["FROM_SPIN"] != v.value {
				t.Errorf("the component's environment: FROM_SPIN=%q, want %q", env["FROM_SPIN"], v.value)
			}
			if env["X_MATCHED_ROUTE"] != v.prefix+"/env/..." || env["PATH_INFO"] != "/deeper" {
				t.Errorf("routing: X_MATCHED_ROUTE=%q PATH_INFO=%q", env["X_MATCHED_ROUTE"], env["PATH_INFO"])
			}
			// Spin's default argv: "${SCRIPT_NAME} ${ARGS}".
			if want := []string{v.prefix + "/env/deeper", "a=1", "b=2"}; strings.Join(argv, "|") != strings.Join(want, "|") {
				t.Errorf("argv = %q, want %q (Spin's default)", argv, want)
			}

			r = c.get(v.prefix + "/files?read&" + v.filesPath)
			if r.status != 200 || string(r.body) != "from spin files\n" {
				t.Errorf("reading the files volume: %d %q\n%s", r.status, r.body, w.log)
			}
			r = c.get(v.prefix + "/files?write&" + v.filesPath)
			if r.status != 500 {
				t.Errorf("writing into the files volume: %d %q, want it refused (read-only)", r.status, r.body)
			}
			if r := c.get(v.prefix + "/sdk"); r.status != 404 {
				t.Errorf("the Spin-executor route that was left out answers %d, want 404", r.status)
			}
			if r := c.get("/healthz"); r.status != 404 {
				t.Errorf("/healthz answers %d: Spin has no such route and the import turns it off", r.status)
			}
		})
	}

	t.Run("a manifest with nothing runnable fails, saying why", func(t *testing.T) {
		p := filepath.Join(app, "sdk-only.toml")
		if err := os.WriteFile(p, []byte("spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = { source = \"modules/env.wasm\" }\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		out := filepath.Join(root, "nothing.toml")
		_, stderr, code := runBin(t, bin, nil, "import", "-o", out, p)
		if code != 1 || !strings.Contains(stderr, "uses Spin's HTTP executor") || !strings.Contains(stderr, "nothing to convert") {
			t.Fatalf("exit %d, stderr %q", code, stderr)
		}
		if _, err := os.Stat(out); !os.IsNotExist(err) {
			t.Fatalf("a config was written for nothing: %v", err)
		}
	})
}

// `import -o` is likely run in a shared directory, maybe as root: a link
// planted where it writes its temporary file must not be followed (the
// link's target would be overwritten with the config).
func TestImportDoesNotWriteThroughALinkPlantedBesideItsOutput(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	app := filepath.Join(dir, "app")
	if err := os.MkdirAll(app, 0o755); err != nil {
		t.Fatal(err)
	}
	manifest := filepath.Join(app, "spin.toml")
	if err := os.WriteFile(manifest, []byte("spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/x\"\ncomponent = { source = \"x.wasm\" }\nexecutor = { type = \"wagi\" }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	victim := filepath.Join(dir, "victim")
	if err := os.WriteFile(victim, []byte("precious\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "shared", "wagi.toml")
	if err := os.MkdirAll(filepath.Dir(out), 0o1777); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(victim, out+".tmp"); err != nil {
		t.Fatal(err)
	}
	if _, stderr, code := runBin(t, bin, nil, "import", "-o", out, manifest); code != 0 {
		t.Fatalf("import: exit %d: %s", code, stderr)
	}
	if b, _ := os.ReadFile(victim); string(b) != "precious\n" {
		t.Fatalf("the link's target was overwritten: %q", b)
	}
	if b, err := os.ReadFile(out); err != nil || !strings.Contains(string(b), `route = "/x"`) {
		t.Fatalf("config not written: %v %q", err, b)
	}
}
