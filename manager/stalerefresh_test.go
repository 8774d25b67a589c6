package manager_test

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// stallingRegistry serves one module under a tag, until stall is set:
// then it accepts requests and answers none (a registry behind a
// firewall that drops packets behaves much the same).
type stallingRegistry struct {
	manifest, layer []byte
	stall           atomic.Bool
	quit            chan struct{} // closed at the test's end: stalled requests return
}

func digestOf(b []byte) string { s := sha256.Sum256(b); return "sha256:" + hex.EncodeToString(s[:]) }

func newStallingRegistry(t *testing.T, module []byte) *stallingRegistry {
	r := &stallingRegistry{layer: module, quit: make(chan struct{})}
	r.manifest, _ = json.Marshal(map[string]any{
		"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
		"config": map[string]any{"mediaType": "application/vnd.wasm.config.v1+json", "digest": digestOf([]byte("{}")), "size": 2},
		"layers": []map[string]any{{"mediaType": "application/vnd.wasm.content.layer.v1+wasm", "digest": digestOf(module), "size": len(module)}},
	})
	return r
}

func (r *stallingRegistry) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	if r.stall.Load() {
		select {
		case <-req.Context().Done():
		case <-r.quit:
		}
		return
	}
	switch {
	case strings.Contains(req.URL.Path, "/manifests/"):
		w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
		w.Header().Set("Docker-Content-Digest", digestOf(r.manifest))
		w.Header().Set("Content-Length", strconv.Itoa(len(r.manifest)))
		if req.Method == http.MethodGet {
			_, _ = w.Write(r.manifest)
		}
	case strings.Contains(req.URL.Path, "/blobs/"):
		_, _ = w.Write(r.layer)
	default:
		http.NotFound(w, req)
	}
}

// A tag is resolved again once its TTL is over. When its registry then
// stalls, requests keep being served by the module the tag had, at once:
// they do not wait out fetch_timeout behind the refresh, every TTL.
func TestAStallingRegistryDoesNotStallItsRouteAfterTheTTL(t *testing.T) {
	module, err := os.ReadFile(testenv.Module(t, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	reg := newStallingRegistry(t, module)
	srv := httptest.NewServer(reg)
	defer srv.Close()
	defer close(reg.quit)
	addr := srv.Listener.Addr().String()
	f := newFixture(t, `
[ipfs]
fetch_timeout = "30s"

[oci]
insecure_registries = ["`+addr+`"]
tag_ttl = "3s"

[[module]]
route = "/tagged"
module = "oci:`+addr+`/mods/app:stable"
`)
	if rec := f.do(t, "GET", "/tagged", nil); rec.Code != 200 {
		t.Fatalf("first GET = %d %q\n%s", rec.Code, rec.Body, f.log)
	}
	loaded := time.Now()
	reg.stall.Store(true)
	time.Sleep(time.Until(loaded.Add(4 * time.Second))) // tag_ttl
	start := time.Now()
	rec := f.do(t, "GET", "/tagged", nil)
	took := time.Since(start)
	t.Logf("GET after the TTL, registry stalled: %s", took.Round(time.Millisecond))
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), "Hello") {
		t.Fatalf("GET after the TTL = %d %q\n%s", rec.Code, rec.Body, f.log)
	}
	// The limit in question is wall time: far under fetch_timeout (30s).
	if took > 10*time.Second {
		t.Fatalf("GET after the TTL waited %s behind the stalled refresh (fetch_timeout 30s)", took.Round(time.Millisecond))
	}
}
