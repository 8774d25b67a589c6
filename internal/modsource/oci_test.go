package modsource

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
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
