package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestAReadOnlyVolumeAWritableOneCanReachIsRefused(t *testing.T) {
	dir := t.TempDir()
	for _, d := range []string{"vol/ro", "other"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Symlink(filepath.Join(dir, "vol"), filepath.Join(dir, "link")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		volumes string
		bad     bool
	}{
		{"a read-only directory inside a writable one", `{ "/data" = "vol", "/data/ro" = "vol/ro:ro" }`, true},
		{"a read-only directory elsewhere in the guest tree", `{ "/data" = "vol", "/ro" = "vol/ro:ro" }`, true},
		{"the writable directory itself again, read-only", `{ "/a" = "vol", "/b" = "vol:ro" }`, true},
		{"a not yet existing directory inside", `{ "/a" = "vol", "/b" = "vol/new/sub:ro" }`, true},
		{"a path that is not clean", `{ "/a" = "./other/../vol", "/b" = "vol//ro/:ro" }`, true},
		{"through a symlink to the writable directory", `{ "/a" = "vol", "/b" = "link/ro:ro" }`, true},
		{"a writable symlink to the directory holding it", `{ "/a" = "link", "/b" = "vol/ro:ro" }`, true},
		{"the same directory read-only twice", `{ "/a" = "vol:ro", "/b" = "vol/ro:ro" }`, false},
		{"a writable directory inside a read-only one", `{ "/a" = "vol:ro", "/b" = "vol/ro" }`, false},
		{"a sibling with a common name prefix", `{ "/a" = "vol/r", "/b" = "vol/ro:ro" }`, false},
		{"separate directories", `{ "/a" = "other", "/b" = "vol:ro" }`, false},
		{"mfs and ipfs volumes", `{ "/a" = "mfs:/wagi/x", "/b" = "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi" }`, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "\n[[module]]\nroute = \"/\"\nmodule = \"m.wasm\"\nvolumes = " + tt.volumes + "\n"
			_, err := Parse([]byte(src), "wagi.toml", dir)
			if !tt.bad {
				if err != nil {
					t.Fatalf("refused: %v", err)
				}
				return
			}
			if err == nil {
				t.Fatal("accepted")
			}
			if msg := err.Error(); !strings.HasPrefix(msg, "wagi.toml:5: ") || !strings.Contains(msg, "read-only volume") || !strings.Contains(msg, "writable volume") {
				t.Fatalf("error %q does not name wagi.toml:5 and both volumes", msg)
			}
		})
	}
}

func TestTheSameDirectoryMayBeWritableInOneModuleAndReadOnlyInAnother(t *testing.T) {
	dir := t.TempDir()
	src := `
[[module]]
route = "/admin"
module = "m.wasm"
volumes = { "/data" = "vol" }

[[module]]
route = "/"
module = "m.wasm"
volumes = { "/data" = "vol:ro" }
`
	if _, err := Parse([]byte(src), "wagi.toml", dir); err != nil {
		t.Fatal(err)
	}
}

func TestVolumeQuotasComeFromTheModulesLimits(t *testing.T) {
	src := `
[limits]
volume_bytes = "8MiB"

[[module]]
route = "/a"
module = "m.wasm"
volume_files = 10
volumes = { "/w" = "w", "/r" = "r:ro", "/m" = "mfs:/x" }

[[module]]
route = "/b"
module = "m.wasm"
volume_bytes = 0
volumes = { "/w" = "w2" }
`
	c, err := Parse([]byte(src), "wagi.toml", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][2]int64{}
	for _, m := range c.Modules {
		for _, v := range m.Volumes {
			got[m.Route+v.Guest] = [2]int64{v.QuotaBytes, v.QuotaFiles}
		}
	}
	want := map[string][2]int64{
		"/a/w": {8 << 20, 10}, "/a/r": {0, 0}, "/a/m": {8 << 20, 10},
		"/b/w": {0, 1000},
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: quota %v, want %v", k, got[k], w)
		}
	}
}

func TestAPublishedMFSVolume(t *testing.T) {
	tests := []struct {
		name    string
		modules string
		wantErr string // "" = accepted
		check   func(t *testing.T, v Volume)
	}{
		{name: "is published under its key, every 10 s by default",
			modules: `volumes = { "/data" = { source = "mfs:/wagi/book", publish_ipns = "book" } }`,
			check: func(t *testing.T, v Volume) {
				if v.Kind != VolumeMFS || v.Path != "/wagi/book" || v.PublishIPNS != "book" || v.PublishEvery != DefaultPublishEvery {
					t.Errorf("got %+v", v)
				}
			}},
		{name: "may be published more or less often",
			modules: `volumes = { "/data" = { source = "mfs:/wagi/book", publish_ipns = "book", publish_every = "1m" } }`,
			check: func(t *testing.T, v Volume) {
				if v.PublishEvery != time.Minute {
					t.Errorf("PublishEvery = %v, want 1m", v.PublishEvery)
				}
			}},
		{name: "needs a source",
			modules: `volumes = { "/data" = { publish_ipns = "book" } }`, wantErr: "needs a source"},
		{name: "must be an MFS volume",
			modules: `volumes = { "/data" = { source = "/srv/data", publish_ipns = "book" } }`, wantErr: "needs a writable mfs: volume"},
		{name: "needs publish_ipns in its table form",
			modules: `volumes = { "/data" = { source = "mfs:/wagi/book" } }`, wantErr: "without publish_ipns"},
		{name: "refuses a key name with a slash",
			modules: `volumes = { "/data" = { source = "mfs:/wagi/book", publish_ipns = "../book" } }`, wantErr: "invalid kubo key name"},
		{name: "refuses publication more than once a second",
			modules: `volumes = { "/data" = { source = "mfs:/wagi/book", publish_ipns = "book", publish_every = "100ms" } }`, wantErr: "at least 1s"},
		{name: "refuses an unknown key in the table",
			modules: `volumes = { "/data" = { source = "mfs:/wagi/book", publish_ipns = "book", every = "1s" } }`, wantErr: `unknown key "every"`},
		{name: "refuses one directory under two keys",
			modules: `volumes = { "/data" = { source = "mfs:/wagi/book", publish_ipns = "book" } }
[[module]]
route = "/b"
module = "m.wasm"
volumes = { "/data" = { source = "mfs:/wagi/book", publish_ipns = "other" } }`, wantErr: "a directory has one key"},
		{name: "refuses one key for two directories",
			modules: `volumes = { "/data" = { source = "mfs:/wagi/book", publish_ipns = "book" } }
[[module]]
route = "/b"
module = "m.wasm"
volumes = { "/data" = { source = "mfs:/wagi/other", publish_ipns = "book" } }`, wantErr: "a key names one directory"},
		{name: "may be mounted by two modules under its one key",
			modules: `volumes = { "/data" = { source = "mfs:/wagi/book", publish_ipns = "book" } }
[[module]]
route = "/b"
module = "m.wasm"
volumes = { "/d" = { source = "mfs:/wagi/book", publish_ipns = "book" } }`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "\n[[module]]\nroute = \"/\"\nmodule = \"m.wasm\"\n" + tt.modules + "\n"
			cfg, err := Parse([]byte(src), "wagi.toml", t.TempDir())
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil {
				tt.check(t, cfg.Modules[0].Volumes[0])
			}
		})
	}
}
