package config

import (
	"fmt"
	"net/url"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// RefKind says where a module comes from.
type RefKind int

const (
	// RefFile is a local file.
	RefFile RefKind = iota
	// RefIPFS is an immutable IPFS path: a CID, optionally with a path
	// inside it.
	RefIPFS
	// RefIPNS is a mutable IPNS name, optionally with a path inside it.
	RefIPNS
	// RefOCI is an artifact in an OCI registry, by tag or digest.
	RefOCI
	// RefURL is an https:// URL whose bytes must match Digest.
	RefURL
)

func (k RefKind) String() string {
	switch k {
	case RefFile:
		return "file"
	case RefIPFS:
		return "ipfs"
	case RefIPNS:
		return "ipns"
	case RefOCI:
		return "oci"
	case RefURL:
		return "url"
	}
	return fmt.Sprintf("RefKind(%d)", int(k))
}

// ModuleRef is a parsed module reference.
type ModuleRef struct {
	Kind RefKind
	// Path is the absolute file path (RefFile), "CID[/subpath]" (RefIPFS),
	// "NAME[/subpath]" (RefIPNS), "REGISTRY/REPO:TAG" or
	// "REGISTRY/REPO@sha256:HEX" (RefOCI), or the URL (RefURL).
	Path string
	// Raw is the reference as written.
	Raw string
}

// String returns the reference as written.
func (r ModuleRef) String() string { return r.Raw }

// ParseModuleRef parses a module reference, as written in a config file's
// `module = ...` or given to `wagi-fcgi run`:
//
//	hello.wasm, ./dir/hello.wasm, /abs/hello.wasm   a local file; relative to baseDir
//	file:///abs/hello.wasm                          a local file
//	ipfs://CID[/path], /ipfs/CID[/path]             an IPFS path
//	/ipns/NAME[/path], ipns://NAME[/path]           an IPNS name
//	oci:REGISTRY/REPO:TAG, oci:REGISTRY/REPO@sha256:HEX   an OCI artifact (WAGI's form)
//	https://HOST/PATH                               a URL (its digest is Module.Digest)
//
// http:// is accepted from loopback hosts only. Other URL schemes (WAGI's
// bindle:) are errors. CIDs are checked only for their alphabet, not
// decoded.
func ParseModuleRef(ref, baseDir string) (ModuleRef, error) {
	r := ModuleRef{Raw: ref}
	fail := func(format string, args ...any) (ModuleRef, error) {
		return ModuleRef{}, fmt.Errorf("invalid module reference %q: %s", ref, fmt.Sprintf(format, args...))
	}
	if ref == "" {
		return fail("empty")
	}
	if strings.TrimSpace(ref) != ref {
		return fail("leading or trailing white space")
	}
	if strings.ContainsRune(ref, 0) {
		return fail("NUL character")
	}
	var err error
	switch {
	case strings.HasPrefix(ref, "ipfs://"):
		r.Kind = RefIPFS
		r.Path, err = ipfsPath(strings.TrimPrefix(ref, "ipfs://"), isCIDChar)
	case strings.HasPrefix(ref, "/ipfs/"):
		r.Kind = RefIPFS
		r.Path, err = ipfsPath(strings.TrimPrefix(ref, "/ipfs/"), isCIDChar)
	case strings.HasPrefix(ref, "ipns://"):
		r.Kind = RefIPNS
		r.Path, err = ipfsPath(strings.TrimPrefix(ref, "ipns://"), isIPNSChar)
	case strings.HasPrefix(ref, "/ipns/"):
		r.Kind = RefIPNS
		r.Path, err = ipfsPath(strings.TrimPrefix(ref, "/ipns/"), isIPNSChar)
	case strings.HasPrefix(ref, "file:"):
		r.Kind = RefFile
		r.Path, err = fileURLPath(ref)
	case strings.HasPrefix(ref, "oci:"):
		r.Kind = RefOCI
		r.Path, err = ociRef(strings.TrimPrefix(ref, "oci:"))
	case strings.HasPrefix(ref, "https:"), strings.HasPrefix(ref, "http:"):
		r.Kind = RefURL
		r.Path, err = urlRef(ref)
	case strings.HasPrefix(ref, "bindle:"):
		return fail("bindle is dead: the Bindle project was archived and no server is maintained, so bindle: references are not supported; " +
			"publish the module as a file, to IPFS, to an OCI registry (oci:) or at an https URL with a digest")
	default:
		if scheme, ok := urlScheme(ref); ok {
			return fail("unsupported scheme %q (use a path, file:///abs, ipfs://CID, /ipfs/CID, /ipns/NAME, oci:REGISTRY/REPO:TAG or https://HOST/PATH with a digest)", scheme)
		}
		r.Kind = RefFile
		r.Path = resolve(ref, baseDir)
	}
	if err != nil {
		return fail("%v", err)
	}
	return r, nil
}

// ipfsPath validates "ROOT[/sub/path]" where ROOT is a CID or IPNS name.
func ipfsPath(p string, rootChar func(rune) bool) (string, error) {
	root, sub, hasSub := strings.Cut(p, "/")
	if root == "" {
		return "", fmt.Errorf("missing CID or name")
	}
	for _, c := range root {
		if !rootChar(c) {
			return "", fmt.Errorf("%q is not a valid CID or name (character %q)", root, c)
		}
	}
	if hasSub {
		if sub == "" {
			return root, nil // a trailing slash
		}
		for _, seg := range strings.Split(sub, "/") {
			if seg == "" || seg == "." || seg == ".." {
				return "", fmt.Errorf("path %q inside %s is not clean", "/"+sub, root)
			}
		}
		for _, c := range sub {
			if c < ' ' || c == 0x7f {
				return "", fmt.Errorf("control character in path %q", "/"+sub)
			}
		}
		return root + "/" + sub, nil
	}
	return root, nil
}

// isCIDChar accepts the characters of the multibase encodings CIDs are
// written in (base32, base36, base58btc).
func isCIDChar(c rune) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9'
}

// isIPNSChar accepts a CID-style key or a DNSLink domain name.
func isIPNSChar(c rune) bool { return isCIDChar(c) || c == '.' || c == '-' }

// fileURLPath returns the absolute path of a file:///abs URL.
func fileURLPath(ref string) (string, error) {
	u, err := url.Parse(ref)
	if err != nil {
		return "", err
	}
	if u.Host != "" && u.Host != "localhost" {
		return "", fmt.Errorf("a file URL must be file:///absolute/path, not name a host %q", u.Host)
	}
	if u.Opaque != "" || !strings.HasPrefix(u.Path, "/") {
		return "", fmt.Errorf("a file URL must be file:///absolute/path")
	}
	if u.RawQuery != "" || u.Fragment != "" {
		return "", fmt.Errorf("a file URL must not have a query or fragment")
	}
	return filepath.Clean(u.Path), nil
}

// urlScheme reports whether s starts with a URL scheme ("oci:", "http:").
func urlScheme(s string) (string, bool) {
	i := strings.IndexByte(s, ':')
	if i < 2 { // no scheme, or a one-letter one (never used; a drive letter)
		return "", false
	}
	for j, c := range s[:i] {
		alpha := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
		if !(alpha || j > 0 && ('0' <= c && c <= '9' || c == '+' || c == '-' || c == '.')) {
			return "", false
		}
	}
	return s[:i], true
}

// resolve makes p absolute against baseDir and cleans it.
func resolve(p, baseDir string) string {
	if filepath.IsAbs(p) {
		return filepath.Clean(p)
	}
	return filepath.Join(baseDir, p)
}

// VolumeKind says what backs a volume.
type VolumeKind int

const (
	// VolumeLocal is a host directory.
	VolumeLocal VolumeKind = iota
	// VolumeIPFS is a read-only UnixFS directory, ipfs://CID.
	VolumeIPFS
	// VolumeMFS is a read-write directory in the kubo node's mutable
	// file system, mfs:/path.
	VolumeMFS
	// VolumeIPNS is a read-only UnixFS directory behind a mutable IPNS
	// name, ipns://NAME or /ipns/NAME: resolved again every ipns_ttl, so
	// it follows what the name's publisher (another node's published MFS
	// volume, say) last published.
	VolumeIPNS
)

func (k VolumeKind) String() string {
	switch k {
	case VolumeLocal:
		return "local"
	case VolumeIPFS:
		return "ipfs"
	case VolumeMFS:
		return "mfs"
	case VolumeIPNS:
		return "ipns"
	}
	return fmt.Sprintf("VolumeKind(%d)", int(k))
}

// Volume is a directory a module sees.
type Volume struct {
	// Guest is the absolute, clean path the module sees, e.g. "/static".
	Guest string
	// Source is the source as written, minus a ":ro" suffix.
	Source string
	Kind   VolumeKind
	// Path is the absolute host path (VolumeLocal), "CID[/subpath]"
	// (VolumeIPFS), "NAME[/subpath]" (VolumeIPNS) or the absolute MFS path
	// (VolumeMFS).
	Path string
	// ReadOnly is set by a ":ro" suffix on a local source, and always for
	// IPFS and IPNS.
	ReadOnly bool
	// PublishIPNS is the kubo key under which a writable MFS volume is
	// published (its directory's CID, when it changed, at most every
	// PublishEvery), so that other nodes can mount it read-only as
	// /ipns/NAME. Empty: not published.
	PublishIPNS  string
	PublishEvery time.Duration
	// QuotaBytes and QuotaFiles are the module's volume_bytes and
	// volume_files for a writable volume (0 = no bound; always 0 for a
	// read-only one). Set when the module's limits are known.
	QuotaBytes, QuotaFiles int64
}

// ParseVolume parses one volume: a guest path and its source, as in the
// config's `volumes = { GUEST = SRC }` or `wagi-fcgi run --dir GUEST=SRC`.
// Sources are a local directory (relative to baseDir; read-write unless
// suffixed ":ro"), file:///abs, ipfs://CID[/path] or /ipfs/CID[/path]
// (read-only), ipns://NAME[/path] or /ipns/NAME[/path] (read-only,
// following the name), or mfs:/path (read-write). A local directory that
// really lives under /ipfs or /ipns (kubo's FUSE mounts) is written
// file:///ipfs/....
func ParseVolume(guest, src, baseDir string) (Volume, error) {
	fail := func(format string, args ...any) (Volume, error) {
		return Volume{}, fmt.Errorf("invalid volume %q = %q: %s", guest, src, fmt.Sprintf(format, args...))
	}
	if !strings.HasPrefix(guest, "/") {
		return fail("the guest path must be absolute")
	}
	if path.Clean(guest) != guest {
		return fail("the guest path must be clean (%q)", path.Clean(guest))
	}
	if strings.ContainsFunc(guest, func(c rune) bool { return c < ' ' || c == 0x7f }) {
		return fail("control character in the guest path")
	}
	if strings.ContainsRune(src, 0) {
		return fail("NUL character in the source")
	}
	v := Volume{Guest: guest}
	s, ro := strings.CutSuffix(src, ":ro")
	v.Source = s
	switch {
	case s == "":
		return fail("empty source")
	case strings.HasPrefix(s, "ipfs://") || strings.HasPrefix(s, "/ipfs/"):
		p, err := ipfsPath(strings.TrimPrefix(strings.TrimPrefix(s, "ipfs://"), "/ipfs/"), isCIDChar)
		if err != nil {
			return fail("%v", err)
		}
		v.Kind, v.Path, v.ReadOnly = VolumeIPFS, p, true
	case strings.HasPrefix(s, "ipns://") || strings.HasPrefix(s, "/ipns/"):
		p, err := ipfsPath(strings.TrimPrefix(strings.TrimPrefix(s, "ipns://"), "/ipns/"), isIPNSChar)
		if err != nil {
			return fail("%v", err)
		}
		v.Kind, v.Path, v.ReadOnly = VolumeIPNS, p, true
	case strings.HasPrefix(s, "mfs:"):
		if ro {
			return fail("mfs: volumes are read-write; use ipfs://CID for a read-only directory")
		}
		p := strings.TrimPrefix(s, "mfs:")
		if !strings.HasPrefix(p, "/") || path.Clean(p) != p {
			return fail("the MFS path must be absolute and clean, like mfs:/wagi/data")
		}
		v.Kind, v.Path = VolumeMFS, p
	case strings.HasPrefix(s, "file:"):
		p, err := fileURLPath(s)
		if err != nil {
			return fail("%v", err)
		}
		v.Kind, v.Path, v.ReadOnly = VolumeLocal, p, ro
	default:
		if scheme, ok := urlScheme(s); ok {
			return fail("unsupported scheme %q (use a path, file:///abs, ipfs://CID, ipns://NAME or mfs:/path)", scheme)
		}
		v.Kind, v.Path, v.ReadOnly = VolumeLocal, resolve(s, baseDir), ro
	}
	return v, nil
}
