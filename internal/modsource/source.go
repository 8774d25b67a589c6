// Package modsource says where module bytes come from: a local file, IPFS,
// IPNS, an OCI registry or an HTTPS URL pinned by digest. Each kind of
// reference is one Source; the manager asks it for the reference's current
// content identity, for bytes, and for the status of its failures, and
// keeps everything else (shared loads, the content-addressed store, bad
// module marks, compile charging) to itself. No Source parses, compiles or
// runs the bytes it fetches.
package modsource

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// RefreshTTL is how long the resolution of a mutable reference (an IPNS
// name, an OCI tag) is used before it is resolved again, unless the config
// says otherwise ([ipfs] ipns_ttl, [oci] tag_ttl); new content then
// becomes a new module (with a fresh budget).
const RefreshTTL = time.Minute

// ttlOr is d, or RefreshTTL when d is 0.
func ttlOr(d time.Duration) time.Duration {
	if d > 0 {
		return d
	}
	return RefreshTTL
}

// Source is where one module reference's bytes come from.
type Source interface {
	// Kind says where the bytes come from, for log lines ("module
	// fetched from IPFS"): "a file", "IPFS", "an OCI registry", "its URL".
	Kind() string
	// Name is the reference, canonical, as the cache index knows it:
	// a restart finds the module it last loaded under this name.
	Name() string
	// Remote reports whether the bytes come over the network: such a
	// module is loaded from the cache at start or else on its first
	// request, and kept in the bounded store. A local file is read at
	// start, and a failure fails the start.
	Remote() bool
	// TTL is how long a resolution holds; 0 for an immutable reference
	// (a file, a CID, an OCI digest, a URL with its digest). A mutable
	// one that cannot be resolved again falls back on the module cached
	// under Name.
	TTL() time.Duration
	// Resolve returns the immutable identity of what the reference names
	// now: the cache index key its bytes are remembered under, and what
	// Fetch takes. An immutable reference returns Name without any I/O.
	Resolve(ctx context.Context) (string, error)
	// Fetch returns the bytes of id (from Resolve), at most max bytes (0:
	// no bound), checked against every digest the reference or the
	// source gives before they are returned.
	Fetch(ctx context.Context, id string, max int64) ([]byte, error)
	// Classify says what an error of Resolve or Fetch means for the
	// request that needed the module, and the message for the client;
	// the manager's status table turns the Failure into a status. ok is
	// false when the error is not this source's (the caller decides).
	Classify(err error, gateway bool) (f Failure, msg string, ok bool)
}

// Failure is what a source's error means for the request that needed its
// module.
type Failure int

const (
	// Unreachable: the node, registry or server could not be reached,
	// and the module is not cached. Worth retrying later.
	Unreachable Failure = iota + 1
	// TimedOut: it did not deliver within fetch_timeout.
	TimedOut
	// Unusable: what it delivered, or answered, is not a module wagi-fcgi
	// will run (too large, wrong digest, not found, refused).
	Unusable
	// NoSuchCID: a gateway request names a CID that IPFS does not have;
	// the client asked for nothing that exists.
	NoSuchCID
)

// Env is what sources need from the server: one per manager (or run).
type Env struct {
	// IPFS is the kubo client for ipfs:, /ipns/ references; nil when
	// none is configured.
	IPFS *ipfs.Client
	// OCI is the [oci] table.
	OCI config.OCI
	// IPNSTTL is [ipfs] ipns_ttl; 0: RefreshTTL.
	IPNSTTL time.Duration
	// HTTP fetches URL modules and talks to registries; nil: a client
	// made by NewEnv's rules.
	HTTP *http.Client

	oci *ociClient
}

// NewEnv prepares the shared parts of the sources: an HTTP client (HTTPS
// roots from the system, or SSL_CERT_FILE / SSL_CERT_DIR) and, for OCI,
// the credentials file.
func NewEnv(ic *ipfs.Client, oci config.OCI) (*Env, error) {
	e := &Env{IPFS: ic, OCI: oci, HTTP: newHTTPClient()}
	c, err := newOCIClient(oci, e.HTTP)
	if err != nil {
		return nil, err
	}
	e.oci = c
	return e, nil
}

// NeedsIPFS reports whether a reference is fetched from the IPFS node.
func NeedsIPFS(ref config.ModuleRef) bool {
	return ref.Kind == config.RefIPFS || ref.Kind == config.RefIPNS
}

// New returns the source of a module reference. digest is the hex sha256
// a URL module must have (config.Module.Digest).
func New(ref config.ModuleRef, digest string, env *Env) (Source, error) {
	switch ref.Kind {
	case config.RefFile:
		return &fileSource{path: ref.Path}, nil
	case config.RefIPFS:
		return &ipfsSource{c: env.IPFS, path: "/ipfs/" + ref.Path}, nil
	case config.RefIPNS:
		return &ipfsSource{c: env.IPFS, path: "/ipns/" + ref.Path, ttl: ttlOr(env.IPNSTTL)}, nil
	case config.RefOCI:
		return newOCISource(ref, env.oci)
	case config.RefURL:
		if digest == "" {
			return nil, fmt.Errorf("module %s: a URL module needs a sha256 digest", ref.Raw)
		}
		return &urlSource{url: ref.Path, digest: digest, client: env.HTTP}, nil
	}
	return nil, fmt.Errorf("module %s: no source for references of kind %s", ref.Raw, ref.Kind)
}

// Errors of the network sources other than IPFS (whose client has its
// own), classified by netFailure.
var (
	// ErrUnavailable: the registry or server could not be reached.
	ErrUnavailable = errors.New("source unreachable")
	// ErrTimeout: it did not deliver in time.
	ErrTimeout = errors.New("fetch timed out")
	// ErrNotFound: it has no such module (a tag, a digest, a URL).
	ErrNotFound = errors.New("not found")
	// ErrTooLarge: the module is larger than max_module_size.
	ErrTooLarge = errors.New("larger than max_module_size")
	// ErrDigestMismatch: the bytes are not the ones the digest names.
	ErrDigestMismatch = errors.New("digest mismatch")
	// ErrNoModule: what the reference names holds no WebAssembly module
	// (an OCI artifact without a wasm layer).
	ErrNoModule = errors.New("no WebAssembly module in the artifact")
	// ErrRefused: the server answered, but not with the module (denied,
	// a server error, a redirect that is not allowed).
	ErrRefused = errors.New("refused")
)

// netFailure classifies the errors above; where says whose they are ("the
// OCI registry", "its server").
func netFailure(err error, where string) (Failure, string, bool) {
	switch {
	case errors.Is(err, ErrUnavailable):
		return Unreachable, "the module is not cached and " + where + " is unreachable", true
	case errors.Is(err, ErrTimeout):
		return TimedOut, "fetching the module from " + where + " timed out", true
	case errors.Is(err, ErrTooLarge):
		return Unusable, "the module is larger than max_module_size", true
	case errors.Is(err, ErrDigestMismatch):
		return Unusable, "the module's bytes do not match its digest", true
	case errors.Is(err, ErrNoModule):
		return Unusable, "the module's artifact holds no WebAssembly layer", true
	case errors.Is(err, ErrNotFound):
		return Unusable, "the module could not be found at " + where, true
	case errors.Is(err, ErrRefused):
		return Unusable, where + " refused the module", true
	}
	return 0, "", false
}
