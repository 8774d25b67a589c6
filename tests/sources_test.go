package tests

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	specs "github.com/opencontainers/image-spec/specs-go"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"
	"oras.land/oras-go/v2/content"
	"oras.land/oras-go/v2/registry/remote"
	"oras.land/oras-go/v2/registry/remote/auth"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// ociRegistry is a real Docker distribution registry (Debian's
// docker-registry) on a loopback port, with its own storage and config.
type ociRegistry struct {
	addr string // 127.0.0.1:PORT
	user string // with pass, the credentials pushes use; "" for none
	pass string
	cmd  *exec.Cmd
	done chan struct{}
	log  *logBuffer
}

func startRegistry(t *testing.T, dir string) *ociRegistry {
	t.Helper()
	return startRegistryWith(t, dir, "", "")
}

// startRegistryWith starts a registry that, when user is not "", accepts
// only user and pass (htpasswd, bcrypt).
func startRegistryWith(t *testing.T, dir, user, pass string) *ociRegistry {
	t.Helper()
	bin, err := exec.LookPath("docker-registry")
	if err != nil {
		t.Fatalf("docker-registry is not installed (run tests/setup.sh): %v", err)
	}
	port := freePort(t)
	r := &ociRegistry{addr: fmt.Sprintf("127.0.0.1:%d", port), user: user, pass: pass, done: make(chan struct{}), log: &logBuffer{}}
	rdir := filepath.Join(dir, "registry")
	if err := os.MkdirAll(filepath.Join(rdir, "storage"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s/storage
  delete:
    enabled: true
http:
  addr: %s
`, rdir, r.addr)
	if user != "" {
		out, err := exec.Command("htpasswd", "-nbB", user, pass).Output()
		if err != nil {
			t.Fatalf("htpasswd (apache2-utils; run tests/setup.sh): %v", err)
		}
		if err := os.WriteFile(filepath.Join(rdir, "htpasswd"), out, 0o644); err != nil {
			t.Fatal(err)
		}
		cfg += fmt.Sprintf("auth:\n  htpasswd:\n    realm: wagi-test\n    path: %s/htpasswd\n", rdir)
	}
	cfgPath := filepath.Join(rdir, "config.yml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	r.cmd = exec.Command(bin, "serve", cfgPath)
	r.cmd.Stdout, r.cmd.Stderr = r.log, r.log
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = r.cmd.Wait(); close(r.done) }()
	t.Cleanup(r.stop)
	waitListening(t, "tcp", r.addr, r.done, 15*time.Second, "docker-registry", func() string {
		return fmt.Sprintf("%v\n%s", r.cmd.ProcessState, r.log)
	})
	return r
}

func (r *ociRegistry) stop() {
	select {
	case <-r.done:
		return
	default:
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(5 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
}

// push publishes layer as a wasm-to-oci artifact (config
// application/vnd.wasm.config.v1+json, one layer of layerType) under
// repo:tag, with oras-go, and returns the manifest's digest.
func (r *ociRegistry) push(t *testing.T, repo, tag, layerType string, layer []byte) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rp, err := remote.NewRepository(r.addr + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	rp.PlainHTTP = true
	if r.user != "" {
		rp.Client = &auth.Client{Credential: auth.StaticCredential(r.addr, auth.Credential{Username: r.user, Password: r.pass})}
	}
	cfg := []byte(`{}`)
	cfgDesc := content.NewDescriptorFromBytes("application/vnd.wasm.config.v1+json", cfg)
	layerDesc := content.NewDescriptorFromBytes(layerType, layer)
	for _, b := range []struct {
		d    ocispec.Descriptor
		data []byte
	}{{cfgDesc, cfg}, {layerDesc, layer}} {
		if err := rp.Push(ctx, b.d, bytes.NewReader(b.data)); err != nil && !strings.Contains(err.Error(), "already exists") {
			t.Fatalf("push blob: %v", err)
		}
	}
	man, err := json.Marshal(ocispec.Manifest{
		Versioned: specs.Versioned{SchemaVersion: 2},
		MediaType: ocispec.MediaTypeImageManifest,
		Config:    cfgDesc,
		Layers:    []ocispec.Descriptor{layerDesc},
	})
	if err != nil {
		t.Fatal(err)
	}
	manDesc := content.NewDescriptorFromBytes(ocispec.MediaTypeImageManifest, man)
	if err := rp.PushReference(ctx, manDesc, bytes.NewReader(man), tag); err != nil {
		t.Fatalf("push manifest: %v", err)
	}
	return manDesc.Digest.String()
}

func readModule(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testenv.Modules(t), name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// TestOCIModulesArePulledFromARegistryAndServedOfflineAfterwards pulls
// modules pushed to a real local registry, through the real binary and
// nginx; then the registry goes away and a restarted server still serves
// what it pulled.
func TestOCIModulesArePulledFromARegistryAndServedOfflineAfterwards(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	reg := startRegistry(t, dir)
	hello := readModule(t, "hello.wasm")
	const wasmLayer = "application/vnd.wasm.content.layer.v1+wasm"
	reg.push(t, "mods/hello", "v1", wasmLayer, hello)
	pinned := reg.push(t, "mods/echo", "v1", wasmLayer, readModule(t, "echo.wasm"))
	reg.push(t, "mods/hello", "later", wasmLayer, hello)
	reg.push(t, "mods/text", "v1", "text/plain", []byte("not a module\n"))
	big := append([]byte("\x00asm\x01\x00\x00\x00"), make([]byte, 2<<20)...)
	reg.push(t, "mods/big", "v1", wasmLayer, big)

	config := fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 1

[ipfs]
fetch_timeout = "20s"
max_module_size = "1MiB"

[oci]
insecure_registries = [%[1]q]

[[module]]
route = "/tag"
module = "oci:%[1]s/mods/hello:v1"

[[module]]
route = "/pinned"
module = "oci:%[1]s/mods/echo@%[2]s"

[[module]]
route = "/missing"
module = "oci:%[1]s/mods/hello:nope"

[[module]]
route = "/text"
module = "oci:%[1]s/mods/text:v1"

[[module]]
route = "/big"
module = "oci:%[1]s/mods/big:v1"

[[module]]
route = "/later"
module = "oci:%[1]s/mods/hello:later"
`, reg.addr, pinned)
	w := startWagi(t, bin, dir, config)
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	t.Run("a module by tag serves", func(t *testing.T) {
		r := c.get("/tag")
		if r.status != 200 || string(r.body) != "Hello, world!\n" {
			t.Fatalf("GET /tag = %d %q", r.status, r.body)
		}
		w.log.waitFor(t, 5*time.Second, "module fetched from an OCI registry", "mods/hello:v1")
	})
	t.Run("a module pinned by manifest digest serves", func(t *testing.T) {
		r := c.do("POST", "/pinned", []byte("pinned body"))
		if r.status != 200 || string(r.body) != "pinned body" {
			t.Fatalf("POST /pinned = %d %q", r.status, r.body)
		}
	})
	t.Run("a missing tag is 502 and says so", func(t *testing.T) {
		r := c.get("/missing")
		if r.status != 502 || !strings.Contains(string(r.body), "could not be found at the OCI registry") {
			t.Fatalf("GET /missing = %d %q", r.status, r.body)
		}
	})
	t.Run("an artifact without a wasm layer is 502", func(t *testing.T) {
		r := c.get("/text")
		if r.status != 502 || !strings.Contains(string(r.body), "no WebAssembly layer") {
			t.Fatalf("GET /text = %d %q", r.status, r.body)
		}
		w.log.waitFor(t, 5*time.Second, "want exactly one layer of type application/vnd.wasm.content.layer.v1+wasm")
	})
	t.Run("a layer over max_module_size is 502 before it is fetched", func(t *testing.T) {
		r := c.get("/big")
		if r.status != 502 || !strings.Contains(string(r.body), "larger than max_module_size") {
			t.Fatalf("GET /big = %d %q", r.status, r.body)
		}
		if _, err := os.Stat(filepath.Join(dir, "state", "modules", sha256Hex(big)+".wasm")); err == nil {
			t.Fatal("the oversized module was stored")
		}
	})

	t.Run("wagi-fcgi run pulls an oci: module", func(t *testing.T) {
		out, errs, code := runBin(t, bin, nil, "run", "--state-dir", filepath.Join(dir, "runstate"),
			"--insecure-registry", reg.addr, "oci:"+reg.addr+"/mods/hello:v1")
		if code != 0 || !strings.Contains(out, "Hello, world!") {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
		}
	})
	t.Run("wagi-fcgi check names the line of a missing tag", func(t *testing.T) {
		// Its own state_dir: check fetches every module, and /later must
		// stay unfetched for the server.
		cfg := filepath.Join(dir, "check.toml")
		text := expand(t, strings.Replace(config, "{{dir}}/state", "{{dir}}/state-check", 1), dir)
		if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		_, errs, code := runBin(t, bin, nil, "check", "-c", cfg)
		if code == 0 || !strings.Contains(errs, "check.toml:27:") || !strings.Contains(errs, "mods/hello:nope") {
			t.Fatalf("exit %d: %s", code, errs)
		}
	})

	// The registry goes away; a restarted server serves what it pulled.
	reg.stop()
	w.stop(t)
	fetched := strings.Count(w.log.String(), "module fetched from an OCI registry")
	w2 := startWagi(t, bin, dir, config)
	c2 := c // the same socket path: nginx reaches the new server
	t.Run("with the registry down, a restarted server serves pulled modules from its cache", func(t *testing.T) {
		if r := c2.get("/tag"); r.status != 200 || string(r.body) != "Hello, world!\n" {
			t.Fatalf("GET /tag = %d %q\n%s", r.status, r.body, w2.log)
		}
		if r := c2.do("POST", "/pinned", []byte("offline")); r.status != 200 || string(r.body) != "offline" {
			t.Fatalf("POST /pinned = %d %q", r.status, r.body)
		}
		if strings.Contains(w2.log.String(), "module fetched from an OCI registry") {
			t.Fatalf("the restarted server fetched again:\n%s", w2.log)
		}
	})
	t.Run("with the registry down, a module never pulled is 503", func(t *testing.T) {
		r := c2.get("/later")
		if r.status != 503 || !strings.Contains(string(r.body), "the OCI registry is unreachable") {
			t.Fatalf("GET /later = %d %q", r.status, r.body)
		}
	})
	if fetched != 2 {
		t.Errorf("the first server fetched %d modules from the registry, want 2 (tag and pinned)", fetched)
	}
}

// selfSignedCert writes a certificate for 127.0.0.1 and its key into dir
// and returns their paths.
func selfSignedCert(t *testing.T, dir string) (certPath, keyPath string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(time.Now().UnixNano()),
		Subject:               pkix.Name{CommonName: "wagi-fcgi test server"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(24 * time.Hour),
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath, keyPath = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	if err := os.WriteFile(certPath, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(keyPath, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600); err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath
}

// startHTTPSFiles runs a real nginx serving root over HTTPS on a loopback
// port with the given certificate; the returned func stops it.
func startHTTPSFiles(t *testing.T, dir, root, cert, key string) (base string, stop func()) {
	t.Helper()
	bin, err := exec.LookPath("nginx")
	if err != nil {
		t.Fatalf("nginx is not installed (run tests/setup.sh): %v", err)
	}
	ndir := filepath.Join(dir, "https")
	for _, d := range []string{"logs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(ndir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	port := freePort(t)
	conf := fmt.Sprintf(`# generated by the wagi-fcgi tests
user root;
worker_processes 1;
error_log %[1]s/logs/error.log info;
pid %[1]s/nginx.pid;
events { worker_connections 64; }
http {
    access_log %[1]s/logs/access.log;
    client_body_temp_path %[1]s/tmp/body;
    proxy_temp_path %[1]s/tmp/proxy;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
    server {
        listen 127.0.0.1:%[2]d ssl;
        ssl_certificate %[3]s;
        ssl_certificate_key %[4]s;
        root %[5]s;
    }
}
`, ndir, port, cert, key, root)
	confPath := filepath.Join(ndir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-p", ndir, "-c", confPath, "-g", "daemon off;")
	out := &logBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	stop = func() {
		select {
		case <-done:
			return
		default:
		}
		_ = cmd.Process.Signal(syscall.SIGQUIT)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
	t.Cleanup(stop)
	waitListening(t, "tcp", fmt.Sprintf("127.0.0.1:%d", port), done, 10*time.Second, "nginx (https)", func() string {
		el, _ := os.ReadFile(filepath.Join(ndir, "logs/error.log"))
		return fmt.Sprintf("%v\n%s\n%s", cmd.ProcessState, out, el)
	})
	return fmt.Sprintf("https://127.0.0.1:%d", port), stop
}

// TestURLModulesNeedTheirDigest fetches modules from a real nginx over
// HTTPS (a self-signed certificate the manager trusts through
// SSL_CERT_FILE) through the real binary and nginx in front.
func TestURLModulesNeedTheirDigest(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	files := filepath.Join(dir, "files")
	if err := os.MkdirAll(files, 0o755); err != nil {
		t.Fatal(err)
	}
	hello, echo := readModule(t, "hello.wasm"), readModule(t, "echo.wasm")
	for name, b := range map[string][]byte{"hello.wasm": hello, "echo.wasm": echo} {
		if err := os.WriteFile(filepath.Join(files, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cert, key := selfSignedCert(t, dir)
	base, stopFiles := startHTTPSFiles(t, dir, files, cert, key)
	// The manager trusts the test's certificate; its children see
	// nothing of its environment.
	t.Setenv("SSL_CERT_FILE", cert)

	t.Run("a URL module without a digest is a config error naming file and line", func(t *testing.T) {
		cfg := filepath.Join(dir, "nodigest.toml")
		text := fmt.Sprintf("listen = \"unix:%s/x.sock\"\nstate_dir = \"%s/state-x\"\n\n[[module]]\nroute = \"/x\"\nmodule = \"%s/hello.wasm\"\n", dir, dir, base)
		if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, cmd := range []string{"check", "serve"} {
			_, errs, code := runBin(t, bin, nil, cmd, "-c", cfg)
			want := cfg + `:6: [[module]] #1 module: a URL module needs digest = "sha256:<64 hex digits>"`
			if code == 0 || !strings.Contains(errs, want) {
				t.Fatalf("%s: exit %d: %s\nwant %s", cmd, code, errs, want)
			}
		}
	})

	config := fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 1

[ipfs]
fetch_timeout = "20s"

[[module]]
route = "/hello"
module = "%[1]s/hello.wasm"
digest = "sha256:%[2]s"

[[module]]
route = "/wrong"
module = "%[1]s/echo.wasm"
digest = "sha256:%[2]s"

[[module]]
route = "/gone"
module = "%[1]s/gone.wasm"
digest = "sha256:%[2]s"
`, base, sha256Hex(hello))
	w := startWagi(t, bin, dir, config)
	c := newClient(t, startNginx(t, dir, w.sock).base)

	t.Run("the right digest serves", func(t *testing.T) {
		if r := c.get("/hello"); r.status != 200 || string(r.body) != "Hello, world!\n" {
			t.Fatalf("GET /hello = %d %q\n%s", r.status, r.body, w.log)
		}
		w.log.waitFor(t, 5*time.Second, "module fetched from its URL", "hello.wasm")
	})
	t.Run("a wrong digest is refused with 502 and nothing is stored", func(t *testing.T) {
		r := c.do("POST", "/wrong", []byte("must not run"))
		if r.status != 502 || !strings.Contains(string(r.body), "do not match its digest") {
			t.Fatalf("POST /wrong = %d %q", r.status, r.body)
		}
		w.log.waitFor(t, 5*time.Second, "module refused: its bytes do not match its digest; nothing was stored",
			"sha256:"+sha256Hex(echo))
		if _, err := os.Stat(filepath.Join(dir, "state", "modules", sha256Hex(echo)+".wasm")); err == nil {
			t.Fatal("the module with the wrong digest was stored")
		}
	})
	t.Run("a URL the server does not have is 502", func(t *testing.T) {
		if r := c.get("/gone"); r.status != 502 || !strings.Contains(string(r.body), "could not be found") {
			t.Fatalf("GET /gone = %d %q", r.status, r.body)
		}
	})

	t.Run("wagi-fcgi run takes a URL with --digest, and refuses one without", func(t *testing.T) {
		state := filepath.Join(dir, "runstate")
		out, errs, code := runBin(t, bin, nil, "run", "--state-dir", state, "--digest", "sha256:"+sha256Hex(hello), base+"/hello.wasm")
		if code != 0 || !strings.Contains(out, "Hello, world!") {
			t.Fatalf("exit %d, stdout %q, stderr %q", code, out, errs)
		}
		_, errs, code = runBin(t, bin, nil, "run", "--state-dir", state, base+"/hello.wasm")
		if code == 0 || !strings.Contains(errs, "needs --digest") {
			t.Fatalf("without --digest: exit %d, stderr %q", code, errs)
		}
	})

	// The file server goes away; a restarted manager serves from its
	// store, and a URL never fetched is 503.
	stopFiles()
	w.stop(t)
	w2 := startWagi(t, bin, dir, config)
	t.Run("with the server down, a restarted server serves the fetched module from its cache", func(t *testing.T) {
		if r := c.get("/hello"); r.status != 200 || string(r.body) != "Hello, world!\n" {
			t.Fatalf("GET /hello = %d %q\n%s", r.status, r.body, w2.log)
		}
		if strings.Contains(w2.log.String(), "module fetched from its URL") {
			t.Fatalf("the restarted server fetched again:\n%s", w2.log)
		}
	})
	t.Run("with the server down, a module never fetched is 503", func(t *testing.T) {
		if r := c.get("/gone"); r.status != 503 || !strings.Contains(string(r.body), "its server is unreachable") {
			t.Fatalf("GET /gone = %d %q", r.status, r.body)
		}
	})
}

// TestAnOCITagIsResolvedAgainAfterItsTTL: a tag that moved serves its new
// module once its resolution's TTL ([oci] tag_ttl, 15s here) is over; a
// tag whose registry is down by then keeps serving the module it had (as
// IPNS names do).
func TestAnOCITagIsResolvedAgainAfterItsTTL(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	up, down := startRegistry(t, filepath.Join(dir, "up")), startRegistry(t, filepath.Join(dir, "down"))
	const wasmLayer = "application/vnd.wasm.content.layer.v1+wasm"
	hello := readModule(t, "hello.wasm")
	up.push(t, "mods/app", "stable", wasmLayer, hello)
	down.push(t, "mods/app", "stable", wasmLayer, hello)
	config := fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 1

[oci]
insecure_registries = [%[1]q, %[2]q]
tag_ttl = "15s"

[[module]]
route = "/moving"
module = "oci:%[1]s/mods/app:stable"

[[module]]
route = "/kept"
module = "oci:%[2]s/mods/app:stable"
`, up.addr, down.addr)
	w := startWagi(t, bin, dir, config)
	c := newClient(t, startNginx(t, dir, w.sock).base)
	for _, p := range []string{"/moving", "/kept"} {
		if r := c.get(p); r.status != 200 || string(r.body) != "Hello, world!\n" {
			t.Fatalf("GET %s = %d %q", p, r.status, r.body)
		}
	}
	loaded := time.Now()
	up.push(t, "mods/app", "stable", wasmLayer, readModule(t, "exit.wasm"))
	down.stop()

	t.Run("within the TTL the tag is not resolved again", func(t *testing.T) {
		if r := c.get("/moving"); string(r.body) != "Hello, world!\n" {
			t.Fatalf("GET /moving = %d %q", r.status, r.body)
		}
	})
	time.Sleep(time.Until(loaded.Add(16 * time.Second)))
	t.Run("after the TTL a moved tag serves its new module", func(t *testing.T) {
		if r := c.get("/moving"); r.status != 200 || !strings.Contains(string(r.body), "exiting") {
			t.Fatalf("GET /moving = %d %q\n%s", r.status, r.body, w.log)
		}
	})
	t.Run("after the TTL a tag whose registry is down keeps its module", func(t *testing.T) {
		if r := c.get("/kept"); r.status != 200 || string(r.body) != "Hello, world!\n" {
			t.Fatalf("GET /kept = %d %q", r.status, r.body)
		}
		w.log.waitFor(t, 5*time.Second, "module reference not resolved; using the module cached for it", down.addr, "connection refused")
	})
}

// TestOCICredentialsComeFromADockerStyleConfigFile: a registry that wants
// a password refuses an anonymous pull (502) and serves one with
// [oci] auth_file.
func TestOCICredentialsComeFromADockerStyleConfigFile(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	reg := startRegistryWith(t, dir, "wagi", "s3cret-pass")
	reg.push(t, "mods/private", "v1", "application/vnd.wasm.content.layer.v1+wasm", readModule(t, "hello.wasm"))
	authFile := filepath.Join(dir, "docker-config.json")
	auths := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, reg.addr, base64.StdEncoding.EncodeToString([]byte("wagi:s3cret-pass")))
	if err := os.WriteFile(authFile, []byte(auths), 0o600); err != nil {
		t.Fatal(err)
	}
	config := func(extra string) string {
		return fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 1

[oci]
insecure_registries = [%[1]q]
%[2]s

[[module]]
route = "/private"
module = "oci:%[1]s/mods/private:v1"
`, reg.addr, extra)
	}
	t.Run("without credentials the pull is refused with 502", func(t *testing.T) {
		d := t.TempDir()
		w := startWagi(t, bin, d, config(""))
		c := newClient(t, startNginx(t, d, w.sock).base)
		if r := c.get("/private"); r.status != 502 || !strings.Contains(string(r.body), "refused") {
			t.Fatalf("GET /private = %d %q\n%s", r.status, r.body, w.log)
		}
		w.log.waitFor(t, 5*time.Second, "module not available", "the registry wants credentials")
	})
	t.Run("with auth_file the module serves", func(t *testing.T) {
		d := t.TempDir()
		w := startWagi(t, bin, d, config(fmt.Sprintf("auth_file = %q", authFile)))
		c := newClient(t, startNginx(t, d, w.sock).base)
		if r := c.get("/private"); r.status != 200 || string(r.body) != "Hello, world!\n" {
			t.Fatalf("GET /private = %d %q\n%s", r.status, r.body, w.log)
		}
	})
}
