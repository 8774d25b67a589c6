package config

import (
	"strings"
	"testing"
)

const testCID = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"

func TestParseModuleRef(t *testing.T) {
	tests := []struct {
		name     string
		ref      string
		wantKind RefKind
		wantPath string
		wantErr  string
	}{
		{name: "a bare file name is relative to the base directory", ref: "hello.wasm", wantKind: RefFile, wantPath: "/base/hello.wasm"},
		{name: "a relative path is cleaned", ref: "./mods/../hello.wasm", wantKind: RefFile, wantPath: "/base/hello.wasm"},
		{name: "an absolute path is kept", ref: "/opt/wasm/hello.wasm", wantKind: RefFile, wantPath: "/opt/wasm/hello.wasm"},
		{name: "a file URL gives its path", ref: "file:///opt/hello.wasm", wantKind: RefFile, wantPath: "/opt/hello.wasm"},
		{name: "a file URL with localhost gives its path", ref: "file://localhost/opt/hello.wasm", wantKind: RefFile, wantPath: "/opt/hello.wasm"},
		{name: "a file URL is percent-decoded", ref: "file:///opt/my%20mod.wasm", wantKind: RefFile, wantPath: "/opt/my mod.wasm"},
		{name: "an ipfs URL gives the CID", ref: "ipfs://" + testCID, wantKind: RefIPFS, wantPath: testCID},
		{name: "an ipfs URL with a path keeps the path", ref: "ipfs://" + testCID + "/bin/app.wasm", wantKind: RefIPFS, wantPath: testCID + "/bin/app.wasm"},
		{name: "an IPFS path gives the CID", ref: "/ipfs/" + testCID, wantKind: RefIPFS, wantPath: testCID},
		{name: "an IPFS path with a sub-path keeps it", ref: "/ipfs/" + testCID + "/app.wasm", wantKind: RefIPFS, wantPath: testCID + "/app.wasm"},
		{name: "a CIDv0 is accepted", ref: "/ipfs/QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG", wantKind: RefIPFS, wantPath: "QmYwAPJzv5CZsnA625s3Xf2nemtYgPpHdWEz79ojWnPbdG"},
		{name: "an IPNS key is accepted", ref: "/ipns/k51qzi5uqu5dlvj2baxnqndepeb86cbk3ng7n3i46uzyxzyqj2xjonzllnv0v8", wantKind: RefIPNS, wantPath: "k51qzi5uqu5dlvj2baxnqndepeb86cbk3ng7n3i46uzyxzyqj2xjonzllnv0v8"},
		{name: "a DNSLink name is accepted", ref: "/ipns/docs.example-site.org/app.wasm", wantKind: RefIPNS, wantPath: "docs.example-site.org/app.wasm"},
		{name: "an ipns URL is accepted", ref: "ipns://example.org", wantKind: RefIPNS, wantPath: "example.org"},
		{name: "an empty reference is rejected", ref: "", wantErr: "empty"},
		{name: "surrounding white space is rejected", ref: " hello.wasm", wantErr: "white space"},
		{name: "an ipfs URL without a CID is rejected", ref: "ipfs://", wantErr: "missing CID"},
		{name: "an IPFS path without a CID is rejected", ref: "/ipfs//x.wasm", wantErr: "missing CID"},
		{name: "a CID with a space is rejected", ref: "ipfs://bafy bafy", wantErr: "not a valid CID"},
		{name: "a CID with punctuation is rejected", ref: "ipfs://bafy...", wantErr: "not a valid CID"},
		{name: "a sub-path climbing out is rejected", ref: "/ipfs/" + testCID + "/../x", wantErr: "not clean"},
		{name: "a sub-path with an empty segment is rejected", ref: "/ipfs/" + testCID + "/a//b", wantErr: "not clean"},
		{name: "an IPNS name with a slash-only path is accepted as the name", ref: "/ipns/example.org/", wantKind: RefIPNS, wantPath: "example.org"},
		{name: "an IPNS name with an underscore is rejected", ref: "/ipns/bad_name", wantErr: "not a valid CID or name"},
		{name: "a file URL naming a host is rejected", ref: "file://server/opt/x.wasm", wantErr: "not name a host"},
		{name: "a relative file URL is rejected", ref: "file:x.wasm", wantErr: "file:///absolute/path"},
		{name: "WAGI's bindle scheme is rejected as dead", ref: "bindle:example.com/hello/1.0.0", wantErr: "bindle is dead"},
		{name: "WAGI's oci reference with a tag is accepted", ref: "oci:ghcr.io/deislabs/hello:1.2.3", wantKind: RefOCI, wantPath: "ghcr.io/deislabs/hello:1.2.3"},
		{name: "an oci reference with a port and a digest is accepted", ref: "oci:127.0.0.1:5000/mods/hello@sha256:" + strings.Repeat("ab", 32), wantKind: RefOCI, wantPath: "127.0.0.1:5000/mods/hello@sha256:" + strings.Repeat("ab", 32)},
		{name: "an oci reference without a tag or digest is rejected", ref: "oci:ghcr.io/deislabs/hello", wantErr: "name a tag or a digest"},
		{name: "an oci reference with an upper-case repository is rejected", ref: "oci:ghcr.io/Deislabs/hello:1", wantErr: "invalid module reference"},
		{name: "an oci reference with a short digest is rejected", ref: "oci:ghcr.io/deislabs/hello@sha256:abcd", wantErr: "invalid module reference"},
		{name: "an https URL is accepted", ref: "https://example.com/mods/x.wasm", wantKind: RefURL, wantPath: "https://example.com/mods/x.wasm"},
		{name: "plain http from a loopback host is accepted", ref: "http://127.0.0.1:8080/x.wasm", wantKind: RefURL, wantPath: "http://127.0.0.1:8080/x.wasm"},
		{name: "plain http from another host is rejected", ref: "http://example.com/x.wasm", wantErr: "only from a loopback host"},
		{name: "a URL with credentials is rejected", ref: "https://user:pw@example.com/x.wasm", wantErr: "credentials"},
		{name: "a URL with a fragment is rejected", ref: "https://example.com/x.wasm#frag", wantErr: "fragment"},
		{name: "an ftp URL is rejected", ref: "ftp://example.com/x.wasm", wantErr: `unsupported scheme "ftp"`},
		{name: "a NUL is rejected", ref: "a\x00.wasm", wantErr: "NUL"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseModuleRef(tt.ref, "/base")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseModuleRef(%q) = %+v, %v; want an error containing %q", tt.ref, got, err, tt.wantErr)
				}
				if !strings.Contains(err.Error(), "invalid module reference") {
					t.Errorf("error %q does not say what it is about", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseModuleRef(%q): %v", tt.ref, err)
			}
			want := ModuleRef{Kind: tt.wantKind, Path: tt.wantPath, Raw: tt.ref}
			if got != want {
				t.Errorf("ParseModuleRef(%q) = %+v, want %+v", tt.ref, got, want)
			}
			if got.String() != tt.ref {
				t.Errorf("String() = %q, want %q", got.String(), tt.ref)
			}
		})
	}
}

func TestParseVolume(t *testing.T) {
	tests := []struct {
		name       string
		guest, src string
		want       Volume
		wantErr    string
	}{
		{name: "a relative local directory is resolved and read-write", guest: "/static", src: "./static",
			want: Volume{Guest: "/static", Source: "./static", Kind: VolumeLocal, Path: "/base/static"}},
		{name: "an absolute local directory is kept", guest: "/data", src: "/srv/data",
			want: Volume{Guest: "/data", Source: "/srv/data", Kind: VolumeLocal, Path: "/srv/data"}},
		{name: "a :ro suffix makes a local directory read-only", guest: "/data", src: "/srv/data:ro",
			want: Volume{Guest: "/data", Source: "/srv/data", Kind: VolumeLocal, Path: "/srv/data", ReadOnly: true}},
		{name: "a file URL is a local directory", guest: "/d", src: "file:///srv/d",
			want: Volume{Guest: "/d", Source: "file:///srv/d", Kind: VolumeLocal, Path: "/srv/d"}},
		{name: "an IPFS directory is read-only", guest: "/assets", src: "ipfs://" + testCID,
			want: Volume{Guest: "/assets", Source: "ipfs://" + testCID, Kind: VolumeIPFS, Path: testCID, ReadOnly: true}},
		{name: "an IPFS directory may name a sub-directory", guest: "/assets", src: "ipfs://" + testCID + "/img",
			want: Volume{Guest: "/assets", Source: "ipfs://" + testCID + "/img", Kind: VolumeIPFS, Path: testCID + "/img", ReadOnly: true}},
		{name: "a :ro suffix on IPFS is redundant but accepted", guest: "/assets", src: "ipfs://" + testCID + ":ro",
			want: Volume{Guest: "/assets", Source: "ipfs://" + testCID, Kind: VolumeIPFS, Path: testCID, ReadOnly: true}},
		{name: "an /ipfs/ path is an IPFS directory too", guest: "/assets", src: "/ipfs/" + testCID,
			want: Volume{Guest: "/assets", Source: "/ipfs/" + testCID, Kind: VolumeIPFS, Path: testCID, ReadOnly: true}},
		{name: "an IPNS name is a read-only directory that follows the name", guest: "/shared", src: "/ipns/k51qzi5uqu5dl7zi3zpbebcu9s28pb5121zy7ccgxx8mzvti2t6lplhizrlcxt",
			want: Volume{Guest: "/shared", Source: "/ipns/k51qzi5uqu5dl7zi3zpbebcu9s28pb5121zy7ccgxx8mzvti2t6lplhizrlcxt", Kind: VolumeIPNS, Path: "k51qzi5uqu5dl7zi3zpbebcu9s28pb5121zy7ccgxx8mzvti2t6lplhizrlcxt", ReadOnly: true}},
		{name: "an ipns:// name may name a sub-directory", guest: "/shared", src: "ipns://example.org/pub",
			want: Volume{Guest: "/shared", Source: "ipns://example.org/pub", Kind: VolumeIPNS, Path: "example.org/pub", ReadOnly: true}},
		{name: "a local directory under /ipns is written as a file URL", guest: "/d", src: "file:///ipns/x",
			want: Volume{Guest: "/d", Source: "file:///ipns/x", Kind: VolumeLocal, Path: "/ipns/x"}},
		{name: "an IPNS volume with a bad name is rejected", guest: "/a", src: "/ipns/bad name", wantErr: "invalid"},
		{name: "an MFS directory is read-write", guest: "/data", src: "mfs:/wagi/guestbook",
			want: Volume{Guest: "/data", Source: "mfs:/wagi/guestbook", Kind: VolumeMFS, Path: "/wagi/guestbook"}},
		{name: "the guest root may be a volume", guest: "/", src: "/srv",
			want: Volume{Guest: "/", Source: "/srv", Kind: VolumeLocal, Path: "/srv"}},
		{name: "a relative guest path is rejected", guest: "static", src: "/srv", wantErr: "must be absolute"},
		{name: "an unclean guest path is rejected", guest: "/a/", src: "/srv", wantErr: "must be clean"},
		{name: "a guest path with dot-dot is rejected", guest: "/a/../b", src: "/srv", wantErr: "must be clean"},
		{name: "an empty source is rejected", guest: "/a", src: "", wantErr: "empty source"},
		{name: "a bare :ro is rejected", guest: "/a", src: ":ro", wantErr: "empty source"},
		{name: "a read-only MFS directory is rejected", guest: "/a", src: "mfs:/x:ro", wantErr: "mfs: volumes are read-write"},
		{name: "a relative MFS path is rejected", guest: "/a", src: "mfs:x", wantErr: "absolute and clean"},
		{name: "an unclean MFS path is rejected", guest: "/a", src: "mfs:/x/../y", wantErr: "absolute and clean"},
		{name: "an IPFS volume with a bad CID is rejected", guest: "/a", src: "ipfs://not a cid", wantErr: "not a valid CID"},
		{name: "an unknown scheme is rejected", guest: "/a", src: "s3://bucket", wantErr: `unsupported scheme "s3"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseVolume(tt.guest, tt.src, "/base")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseVolume(%q, %q) = %+v, %v; want an error containing %q", tt.guest, tt.src, got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("ParseVolume(%q, %q) = %+v, %v; want %+v", tt.guest, tt.src, got, err, tt.want)
			}
		})
	}
}

func TestKindsHaveNames(t *testing.T) {
	tests := []struct{ name, got, want string }{
		{"a file reference", RefFile.String(), "file"},
		{"an IPFS reference", RefIPFS.String(), "ipfs"},
		{"an IPNS reference", RefIPNS.String(), "ipns"},
		{"an IPNS volume", VolumeIPNS.String(), "ipns"},
		{"an unknown reference kind", RefKind(9).String(), "RefKind(9)"},
		{"a local volume", VolumeLocal.String(), "local"},
		{"an IPFS volume", VolumeIPFS.String(), "ipfs"},
		{"an MFS volume", VolumeMFS.String(), "mfs"},
		{"an unknown volume kind", VolumeKind(7).String(), "VolumeKind(7)"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.got != tt.want {
				t.Errorf("String() = %q, want %q", tt.got, tt.want)
			}
		})
	}
}
