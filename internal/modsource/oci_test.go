package modsource

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

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
