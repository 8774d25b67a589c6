package config

import (
	"slices"
	"strings"
	"testing"
	"time"
)

func TestSourceKindsDecode(t *testing.T) {
	digest := strings.Repeat("AB", 32)
	src := `
[oci]
insecure_registries = ["127.0.0.1:5000"]
auth_file = "auth/config.json"
tag_ttl = "5m"

[ipfs]
ipns_ttl = "30s"

[[module]]
route = "/url"
module = "https://example.com/mods/hello.wasm"
digest = "sha256:` + digest + `"

[[module]]
route = "/oci"
module = "oci:127.0.0.1:5000/mods/hello:v1"
`
	c, err := Parse([]byte(src), "modules.toml", "/etc/wagi")
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(c.OCI.InsecureRegistries, []string{"127.0.0.1:5000"}) {
		t.Errorf("insecure_registries = %q", c.OCI.InsecureRegistries)
	}
	if c.OCI.TagTTL != 5*time.Minute || c.IPFS.IPNSTTL != 30*time.Second {
		t.Errorf("tag_ttl = %v, ipns_ttl = %v; want 5m, 30s", c.OCI.TagTTL, c.IPFS.IPNSTTL)
	}
	if c.OCI.AuthFile != "/etc/wagi/auth/config.json" {
		t.Errorf("auth_file = %q, want it relative to the config's directory", c.OCI.AuthFile)
	}
	url, oci := c.Modules[0], c.Modules[1]
	if url.Ref.Kind != RefURL || url.Digest != strings.ToLower(digest) || url.Module != "https://example.com/mods/hello.wasm" {
		t.Errorf("URL module = %+v; want kind url, the digest in lower case", url)
	}
	if oci.Ref.Kind != RefOCI || oci.Ref.Path != "127.0.0.1:5000/mods/hello:v1" || oci.Digest != "" {
		t.Errorf("OCI module = %+v", oci)
	}
}
