package modsource

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"time"

	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/errdef"
	"oras.land/oras-go/v2/registry"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"
	"oras.land/oras-go/v2/registry/remote/credentials"
	"oras.land/oras-go/v2/registry/remote/errcode"

	"github.com/wagi-fcgi/wagi-fcgi/config"
)

// The media types a module's layer may have: wasm-to-oci's, which WAGI
// pulled (engineerd/wasm-to-oci, with config
// application/vnd.wasm.config.v1+json), and the CNCF wasm OCI artifact's.
var wasmLayerTypes = []string{
	"application/vnd.wasm.content.layer.v1+wasm",
	"application/wasm",
}

// The manifests a module may be in: an OCI image manifest (what
// wasm-to-oci and oras push) or Docker's schema 2.
var manifestTypes = []string{
	ocispec.MediaTypeImageManifest,
	"application/vnd.docker.distribution.manifest.v2+json",
}

// maxManifestBytes bounds a manifest read (as oras-go's own default).
const maxManifestBytes = 4 << 20

// ociClient is how every oci: source reaches registries.
type ociClient struct {
	insecure map[string]bool
	client   remote.Client
	tagTTL   time.Duration
}

func newOCIClient(cfg config.OCI, hc *http.Client) (*ociClient, error) {
	ac := &auth.Client{Client: hc, Cache: auth.NewCache()}
	ac.SetUserAgent("wagi-fcgi")
	if cfg.AuthFile != "" {
		// oras-go takes a missing file for an empty one: a typo must
		// not turn into anonymous pulls.
		if _, err := os.Stat(cfg.AuthFile); err != nil {
			return nil, fmt.Errorf("[oci] auth_file: %w", err)
		}
		// Read as a file only: credential helpers named in it would
		// be programs run by the manager, and are not.
		st, err := credentials.NewFileStore(cfg.AuthFile)
		if err != nil {
			return nil, fmt.Errorf("[oci] auth_file: %w", err)
		}
		ac.Credential = credentials.Credential(st)
	}
	c := &ociClient{insecure: map[string]bool{}, client: ac, tagTTL: ttlOr(cfg.TagTTL)}
	for _, r := range cfg.InsecureRegistries {
		c.insecure[r] = true
	}
	return c, nil
}

func (c *ociClient) repo(ref registry.Reference) *remote.Repository {
	return &remote.Repository{Client: c.client, Reference: ref, PlainHTTP: c.insecure[ref.Registry],
		MaxMetadataBytes: maxManifestBytes}
}

// ociSource is WAGI's oci:REGISTRY/REPO:TAG (mutable: the tag is resolved
// again after RefreshTTL) or oci:REGISTRY/REPO@sha256:HEX (immutable).
// Its content identity is the manifest's digest; the module is the
// manifest's one wasm layer, checked against its digest.
type ociSource struct {
	c   *ociClient
	ref registry.Reference
}

func newOCISource(ref config.ModuleRef, c *ociClient) (Source, error) {
	r, err := registry.ParseReference(ref.Path)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", ref.Raw, err)
	}
	return &ociSource{c: c, ref: r}, nil
}

func (s *ociSource) Kind() string { return "an OCI registry" }
func (s *ociSource) Name() string { return "oci:" + s.ref.String() }
func (s *ociSource) Remote() bool { return true }

func (s *ociSource) pinned() bool { return s.ref.ValidateReferenceAsDigest() == nil }

func (s *ociSource) TTL() time.Duration {
	if s.pinned() {
		return 0
	}
	return s.c.tagTTL
}

func (s *ociSource) Resolve(ctx context.Context) (string, error) {
	if s.pinned() {
		return s.Name(), nil
	}
	ctx = withOrigin(ctx, registryHost(s.ref.Registry))
	desc, err := s.c.repo(s.ref).Resolve(ctx, s.ref.Reference)
	if err != nil {
		return "", fmt.Errorf("resolve %s: %w", s.Name(), ociError(ctx, err))
	}
	return "oci:" + s.ref.Registry + "/" + s.ref.Repository + "@" + desc.Digest.String(), nil
}

func (s *ociSource) Fetch(ctx context.Context, id string, max int64) ([]byte, error) {
	ref, err := registry.ParseReference(strings.TrimPrefix(id, "oci:"))
	if err != nil {
		return nil, err
	}
	ctx = withOrigin(ctx, registryHost(ref.Registry))
	repo := s.c.repo(ref)
	desc, err := repo.Resolve(ctx, ref.Reference)
	if err != nil {
		return nil, fmt.Errorf("fetch %s: %w", id, ociError(ctx, err))
	}
	if desc.Digest.String() != ref.Reference {
		return nil, fmt.Errorf("fetch %s: %w: the registry gave manifest %s", id, ErrDigestMismatch, desc.Digest)
	}
	if !slices.Contains(manifestTypes, desc.MediaType) {
		return nil, fmt.Errorf("fetch %s: %w: manifest of type %q (an index or another kind of artifact)", id, ErrNoModule, desc.MediaType)
	}
	if desc.Size > maxManifestBytes {
		return nil, fmt.Errorf("fetch %s: %w: manifest of %d bytes", id, ErrTooLarge, desc.Size)
	}
	b, err := content.FetchAll(ctx, repo.Manifests(), desc) // checked against its digest
	if err != nil {
		return nil, fmt.Errorf("fetch %s: manifest: %w", id, ociError(ctx, err))
	}
	var man ocispec.Manifest
	if err := json.Unmarshal(b, &man); err != nil {
		return nil, fmt.Errorf("fetch %s: %w: manifest: %v", id, ErrNoModule, err)
	}
	var layers []ocispec.Descriptor
	for _, l := range man.Layers {
		if slices.Contains(wasmLayerTypes, l.MediaType) {
			layers = append(layers, l)
		}
	}
	if len(layers) != 1 {
		return nil, fmt.Errorf("fetch %s: %w: want exactly one layer of type %s, found %d", id, ErrNoModule,
			strings.Join(wasmLayerTypes, " or "), len(layers))
	}
	layer := layers[0]
	if layer.Size < 0 || layer.Digest.Validate() != nil {
		return nil, fmt.Errorf("fetch %s: %w: its layer descriptor is invalid (size %d, digest %q)", id, ErrNoModule, layer.Size, layer.Digest)
	}
	if max > 0 && layer.Size > max {
		return nil, fmt.Errorf("fetch %s: %w: layer of %d bytes, over %d", id, ErrTooLarge, layer.Size, max)
	}
	bin, err := content.FetchAll(ctx, repo.Blobs(), layer) // checked against its digest and size
	if err != nil {
		return nil, fmt.Errorf("fetch %s: layer %s: %w", id, layer.Digest, ociError(ctx, err))
	}
	return bin, nil
}

func (s *ociSource) Classify(err error, _ bool) (Failure, string, bool) {
	return netFailure(err, "the OCI registry")
}

// ociError turns an oras-go error into one of this package's errors,
// keeping its text.
func ociError(ctx context.Context, err error) error {
	var resp *errcode.ErrorResponse
	switch {
	case errors.Is(err, errdef.ErrNotFound):
		return fmt.Errorf("%w: %v", ErrNotFound, err)
	case errors.Is(err, content.ErrMismatchedDigest), errors.Is(err, content.ErrTrailingData):
		return fmt.Errorf("%w: %v", ErrDigestMismatch, err)
	case errors.Is(err, errdef.ErrSizeExceedsLimit):
		return fmt.Errorf("%w: %v", ErrTooLarge, err)
	case errors.Is(err, auth.ErrBasicCredentialNotFound):
		return fmt.Errorf("%w: the registry wants credentials and [oci] auth_file has none for it: %v", ErrRefused, err)
	case errors.As(err, &resp):
		if resp.StatusCode == http.StatusNotFound {
			return fmt.Errorf("%w: %v", ErrNotFound, err)
		}
		return fmt.Errorf("%w: %v", ErrRefused, err)
	}
	// Anything classify does not know is the registry answering what the
	// protocol does not allow (a body shorter than its Content-Length, a
	// digest of an unknown algorithm): its fault (502), not the manager's
	// (500).
	return refusedUnlessKnown(classify(ctx, err))
}

// registryHost is the host of a registry written host[:port].
func registryHost(reg string) string {
	if h, _, err := net.SplitHostPort(reg); err == nil {
		return h
	}
	return reg
}
