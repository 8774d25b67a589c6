package config

import (
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"

	"oras.land/oras-go/v2/registry"
)

// OCI is the [oci] table: how oci: module references are pulled.
type OCI struct {
	// InsecureRegistries are registries ("host:port", as written in the
	// reference) reached over plain HTTP; every other registry is HTTPS.
	InsecureRegistries []string
	// AuthFile is a docker-style config.json whose "auths" entries give
	// the credentials for registries; "" pulls anonymously. Credential
	// helpers (credsStore, credHelpers) are not run.
	AuthFile string
	// TagTTL is how long a tag's resolution is used before the registry
	// is asked again; 0 means modsource's default (a minute).
	TagTTL time.Duration
}

func (d *decoder) oci(p keyPath, m map[string]any, c *OCI) {
	known := []string{"insecure_registries", "auth_file", "tag_ttl"}
	for _, k := range d.keys(p, m) {
		kp, v := p.child(k), m[k]
		switch k {
		case "insecure_registries":
			if list, ok := d.stringList(kp, v); ok {
				good := true
				for i, s := range list {
					if _, err := registry.ParseReference(s + "/x"); err != nil || strings.Contains(s, "/") {
						d.bad(kp.child(index(i)), "%q is not a registry host[:port]", s)
						good = false
					}
				}
				if good {
					c.InsecureRegistries = list
				}
			}
		case "tag_ttl":
			if dur, ok := d.duration(kp, v); ok {
				c.TagTTL = dur
			}
		case "auth_file":
			if s, ok := d.str(kp, v); ok {
				if s != "" {
					s = resolve(s, d.baseDir)
				}
				c.AuthFile = s
			}
		default:
			d.unknown(kp, known, "")
		}
	}
}

// moduleDigest checks a module's digest key against its reference: an
// https URL needs one (its bytes are trusted by it alone, as with Spin's
// `source = { url, digest }`); no other kind takes one.
func (d *decoder) moduleDigest(p keyPath, m map[string]any, mod *Module) {
	v, has := m["digest"]
	if !has {
		if mod.Ref.Kind == RefURL {
			d.bad(p.child("module"), "a URL module needs digest = \"sha256:<64 hex digits>\" (the sha256 of the module's bytes)")
		}
		return
	}
	kp := p.child("digest")
	s, ok := d.str(kp, v)
	if !ok {
		return
	}
	if mod.Ref.Kind != RefURL {
		if _, isModule := m["module"]; isModule && mod.Ref.Raw != "" {
			d.bad(kp, "only a URL module takes a digest (an oci: reference pins one as REPO@sha256:...)")
		}
		return
	}
	hexDigest, err := ParseSHA256(s)
	if err != nil {
		d.bad(kp, "%v", err)
		return
	}
	mod.Digest = hexDigest
}

// ParseSHA256 parses "sha256:<64 hex digits>" and returns the hex digits,
// lower case.
func ParseSHA256(s string) (string, error) {
	h, ok := strings.CutPrefix(s, "sha256:")
	if !ok || len(h) != 64 || strings.IndexFunc(h, func(c rune) bool {
		return !('0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F')
	}) >= 0 {
		return "", fmt.Errorf("invalid digest %q: want \"sha256:\" and 64 hex digits", s)
	}
	return strings.ToLower(h), nil
}

// ociRef checks REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:HEX (WAGI's
// oci: references, without the scheme) and returns it in canonical form.
func ociRef(s string) (string, error) {
	r, err := registry.ParseReference(s)
	if err != nil {
		return "", err
	}
	if r.Reference == "" {
		return "", fmt.Errorf("name a tag or a digest: REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:HEX")
	}
	if err := r.ValidateReferenceAsDigest(); err == nil {
		if _, err := ParseSHA256(r.Reference); err != nil {
			return "", fmt.Errorf("only sha256 digests are supported: %v", err)
		}
	}
	return r.String(), nil
}

// urlRef checks the URL of a module fetched over HTTPS (or plain HTTP from
// a loopback host, which never leaves the machine; the digest makes either
// safe for integrity).
func urlRef(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil {
		return "", err
	}
	switch {
	case u.Host == "" || u.Opaque != "":
		return "", fmt.Errorf("want https://HOST/PATH")
	case u.User != nil:
		return "", fmt.Errorf("credentials in a module URL would be logged; they are not accepted")
	case u.Fragment != "":
		return "", fmt.Errorf("a module URL must not have a fragment")
	case u.Scheme == "http" && !loopbackHost(u.Hostname()):
		return "", fmt.Errorf("plain http:// is accepted only from a loopback host; use https://")
	}
	return u.String(), nil
}

func loopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}
