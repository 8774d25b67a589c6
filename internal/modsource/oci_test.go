package modsource

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
)

func TestAMissingOCIAuthFileIsAnErrorNotAnonymousPulls(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.json")
	if _, err := NewEnv(nil, config.OCI{AuthFile: missing}); err == nil || !strings.Contains(err.Error(), "auth_file") {
		t.Fatalf("NewEnv with a missing auth_file = %v, want an error naming auth_file", err)
	}
	present := filepath.Join(t.TempDir(), "config.json")
	if err := os.WriteFile(present, []byte(`{"auths": {}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := NewEnv(nil, config.OCI{AuthFile: present}); err != nil {
		t.Fatalf("NewEnv with an auth_file = %v", err)
	}
}

func TestOCIReferencesKnowWhetherTheyAreMutable(t *testing.T) {
	env, err := NewEnv(nil, config.OCI{})
	if err != nil {
		t.Fatal(err)
	}
	digest := "sha256:" + strings.Repeat("ab", 32)
	for _, tt := range []struct {
		ref     string
		mutable bool
	}{
		{"oci:127.0.0.1:5000/mods/hello:v1", true},
		{"oci:127.0.0.1:5000/mods/hello@" + digest, false},
	} {
		ref, err := config.ParseModuleRef(tt.ref, "")
		if err != nil {
			t.Fatal(err)
		}
		s, err := New(ref, "", env)
		if err != nil {
			t.Fatal(err)
		}
		if got := s.TTL() > 0; got != tt.mutable {
			t.Errorf("%s: TTL %v, want mutable %v", tt.ref, s.TTL(), tt.mutable)
		}
		if !tt.mutable {
			// A digest is its own identity: no registry is asked.
			id, err := s.Resolve(t.Context())
			if err != nil || id != tt.ref {
				t.Errorf("Resolve(%s) = %q, %v", tt.ref, id, err)
			}
		}
	}
}

// A registry's 401 names the URL its tokens come from (the realm), which
// oras-go fetches with the same client, outside checkRedirect. A remote
// registry must not send the manager (root) to this machine's loopback
// that way (oras-go v2.7.0 refuses such realms itself: this holds it to
// that); a registry on loopback may keep its token server there.
func TestARemoteRegistryCannotSendTheManagerToLoopbackForAToken(t *testing.T) {
	var hits atomic.Int32
	canary := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		http.Error(w, "no", http.StatusForbidden)
	}))
	defer canary.Close()
	registry := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="`+canary.URL+`/token",service="r",scope="repository:m:pull"`)
		http.Error(w, "unauthorized", http.StatusUnauthorized)
	}))
	defer registry.Close()

	const remote = "registry.example:5000"
	env, err := NewEnv(nil, config.OCI{InsecureRegistries: []string{remote, registry.Listener.Addr().String()}})
	if err != nil {
		t.Fatal(err)
	}
	// The remote name is dialed to the test registry: it is remote as
	// far as anything but the dialer can tell.
	tr := env.HTTP.Transport.(*http.Transport)
	tr.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if addr == remote {
			addr = registry.Listener.Addr().String()
		}
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}

	for _, tt := range []struct {
		name, ref string
		reached   bool
	}{
		{"a remote registry's loopback realm is refused", "oci:" + remote + "/m:v1", false},
		{"a loopback registry's loopback realm is asked", "oci:" + registry.Listener.Addr().String() + "/m:v1", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			hits.Store(0)
			ref, err := config.ParseModuleRef(tt.ref, "")
			if err != nil {
				t.Fatal(err)
			}
			s, err := New(ref, "", env)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
			defer cancel()
			_, err = s.Resolve(ctx)
			if err == nil {
				t.Fatal("Resolve succeeded against a registry that only answers 401")
			}
			if got := hits.Load() > 0; got != tt.reached {
				t.Fatalf("loopback token server reached: %v, want %v (err: %v)", got, tt.reached, err)
			}
		})
	}
}

func sha(b []byte) string { s := sha256.Sum256(b); return "sha256:" + hex.EncodeToString(s[:]) }

// hostileRegistry serves one manifest naming one layer, and lets each case
// lie about the layer's bytes.
type hostileRegistry struct {
	manifest     []byte
	manifestType string
	blob         func(w http.ResponseWriter, r *http.Request)
}

func (h *hostileRegistry) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case strings.Contains(r.URL.Path, "/manifests/"):
		w.Header().Set("Content-Type", h.manifestType)
		w.Header().Set("Docker-Content-Digest", sha(h.manifest))
		w.Header().Set("Content-Length", strconv.Itoa(len(h.manifest)))
		if r.Method == http.MethodGet {
			_, _ = w.Write(h.manifest)
		}
	case strings.Contains(r.URL.Path, "/blobs/"):
		h.blob(w, r)
	default:
		http.NotFound(w, r)
	}
}

func manifestWith(layers ...map[string]any) []byte {
	b, _ := json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.wasm.config.v1+json", "digest": sha([]byte("{}")), "size": 2},
		"layers": layers,
	})
	return b
}

// A registry is hostile input: whatever it claims about a layer, the
// manager takes at most what it allowed, within fetch_timeout, and the
// failure is the registry's (Unusable: 502, or TimedOut: 504), never the
// 500 of the manager's own failures.
func TestAHostileRegistryGetsTheRightStatus(t *testing.T) {
	module := []byte("\x00asm\x01\x00\x00\x00")
	layer := func(size int64, digest string) map[string]any {
		return map[string]any{"mediaType": "application/vnd.wasm.content.layer.v1+wasm", "digest": digest, "size": size}
	}
	endless := func(w http.ResponseWriter, _ *http.Request) {
		for i := 0; i < 1<<12; i++ {
			if _, err := w.Write(make([]byte, 1<<16)); err != nil {
				return
			}
		}
	}
	tests := []struct {
		name    string
		reg     *hostileRegistry
		failure Failure
	}{
		{"a manifest and layer as declared give the module", &hostileRegistry{manifest: manifestWith(layer(8, sha(module))), blob: func(w http.ResponseWriter, r *http.Request) { w.Write(module) }}, 0},
		{"a blob shorter than its size, without a length, is refused", &hostileRegistry{manifest: manifestWith(layer(8, sha(module))), blob: func(w http.ResponseWriter, r *http.Request) { w.Write(module[:4]) }}, Unusable},
		{"a blob shorter than its size, with its length, is refused", &hostileRegistry{manifest: manifestWith(layer(8, sha(module))), blob: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "4")
			w.Write(module[:4])
		}}, Unusable},
		{"an endless blob is cut at its size and refused", &hostileRegistry{manifest: manifestWith(layer(8, sha(module))), blob: endless}, Unusable},
		{"a blob of other bytes is refused", &hostileRegistry{manifest: manifestWith(layer(8, sha(module))), blob: func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("\x00asm\x01\x00\x00\x01")) }}, Unusable},
		{"a layer of negative size is refused", &hostileRegistry{manifest: manifestWith(layer(-1, sha(module))), blob: func(w http.ResponseWriter, r *http.Request) { w.Write(module) }}, Unusable},
		{"a layer larger than max_module_size is refused before it is asked for", &hostileRegistry{manifest: manifestWith(layer(1<<62, sha(module))), blob: endless}, Unusable},
		{"a layer digest of an unknown algorithm is refused", &hostileRegistry{manifest: manifestWith(layer(8, "md5:00")), blob: func(w http.ResponseWriter, r *http.Request) { w.Write(module) }}, Unusable},
		{"two wasm layers are refused", &hostileRegistry{manifest: manifestWith(layer(8, sha(module)), layer(8, sha(module))), blob: func(w http.ResponseWriter, r *http.Request) { w.Write(module) }}, Unusable},
		{"a blob that drips past the fetch timeout times out", &hostileRegistry{manifest: manifestWith(layer(8, sha(module))), blob: func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Length", "8")
			w.WriteHeader(200)
			_, _ = w.Write(module[:1])
			w.(http.Flusher).Flush()
			<-r.Context().Done()
		}}, TimedOut},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.reg.manifestType = "application/vnd.oci.image.manifest.v1+json"
			srv := httptest.NewServer(tt.reg)
			defer srv.Close()
			addr := srv.Listener.Addr().String()
			env, err := NewEnv(nil, config.OCI{InsecureRegistries: []string{addr}})
			if err != nil {
				t.Fatal(err)
			}
			ref, err := config.ParseModuleRef("oci:"+addr+"/m@"+sha(tt.reg.manifest), "")
			if err != nil {
				t.Fatal(err)
			}
			s, err := New(ref, "", env)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			bin, err := s.Fetch(ctx, s.Name(), 1<<20)
			if tt.failure == 0 {
				if err != nil || string(bin) != string(module) {
					t.Fatalf("Fetch = %q, %v", bin, err)
				}
				return
			}
			if bin != nil {
				t.Fatalf("Fetch returned %d bytes with %v", len(bin), err)
			}
			if f, msg, ok := s.Classify(err, false); !ok || f != tt.failure {
				t.Errorf("Classify = %d %q (ours: %v), want %d; err: %v", f, msg, ok, tt.failure, err)
			}
		})
	}
}
