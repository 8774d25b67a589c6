package testenv

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Timeouts of the kubo daemon's life cycle.
const (
	kuboReadyTimeout = 60 * time.Second // from exec to "Daemon is ready"
	kuboStopGrace    = 5 * time.Second  // from SIGTERM to SIGKILL
	kuboCmdTimeout   = 60 * time.Second // one ipfs CLI command
)

// Kubo is a running offline kubo daemon in a temporary repo. Its RPC API and
// gateway listen on 127.0.0.1 only; it has no swarm listeners, no bootstrap
// peers and no routing, so it never dials out. Create it with StartKubo; it is
// stopped when the test ends.
type Kubo struct {
	// API is the RPC API's multiaddr, e.g. /ip4/127.0.0.1/tcp/NNNN (what
	// $IPFS_PATH/api holds). It stays the same across Restart.
	API string
	// URL is the RPC API's base URL, e.g. http://127.0.0.1:NNNN (requests go
	// to URL + "/api/v0/<command>", by POST).
	URL string
	// Gateway is the HTTP gateway's base URL, e.g. http://127.0.0.1:MMMM
	// (GET Gateway + "/ipfs/<cid>"). It stays the same across Restart.
	Gateway string
	// Repo is the repository directory ($IPFS_PATH), inside t.TempDir().
	Repo string
	// Bin is the ipfs binary.
	Bin string
	// PeerID is the node's libp2p identity.
	PeerID string
	// Swarm is the node's libp2p listen address,
	// /ip4/127.0.0.1/tcp/PORT; empty for an offline node. It stays the
	// same across Restart.
	Swarm string

	online bool // a fleet node: started without --offline
	mu     sync.Mutex
	daemon *kuboDaemon // nil while stopped
}

// kuboDaemon is one run of `ipfs daemon`.
type kuboDaemon struct {
	cmd  *exec.Cmd
	out  *syncBuffer   // the daemon's stdout and stderr
	done chan struct{} // closed once the process has exited
	err  error         // cmd.Wait's result, valid after done
}

// syncBuffer is a bytes.Buffer safe for one writer and concurrent readers.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// kuboResult is the outcome of the one tests/kubo.sh run of this process.
type kuboResult struct {
	bin    string
	output []byte
	err    error
}

// kuboOnce runs tests/kubo.sh at most once per test process. Like buildOnce
// it is package-level state on purpose (the same documented exception): a
// process-wide cache of an idempotent step whose only side effect is the
// cached binary outside the repository. The script serialises concurrent
// processes with flock and reuses the cached binary.
var kuboOnce = sync.OnceValue(func() kuboResult {
	root, err := findRoot()
	if err != nil {
		return kuboResult{err: err}
	}
	cmd := exec.Command("bash", filepath.Join(root, "tests", "kubo.sh"))
	cmd.Dir = root
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return kuboResult{output: stderr.Bytes(), err: err}
	}
	bin := strings.TrimSpace(string(out))
	if bin == "" || strings.Contains(bin, "\n") {
		return kuboResult{output: stderr.Bytes(), err: fmt.Errorf("tests/kubo.sh printed %q, want one path", out)}
	}
	return kuboResult{bin: bin, output: stderr.Bytes()}
})

// KuboBin returns the path of the ipfs binary of tests/kubo.sh, building it
// (once per process; several minutes when the cache is cold) if needed. It
// fails the test, with the script's output, when that fails.
func KuboBin(t testing.TB) string {
	t.Helper()
	r := kuboOnce()
	if r.err != nil {
		t.Fatalf("testenv: getting the kubo binary (tests/kubo.sh) failed: %v\n%s", r.err, r.output)
	}
	return r.bin
}

// StartKubo initialises a kubo repo in t.TempDir() (profile "test", then
// made offline and loopback-only), starts `ipfs daemon --offline` on it,
// waits until the RPC API answers, and stops the daemon when the test ends.
// It fails the test, with the daemon's output, on any error.
func StartKubo(t testing.TB) *Kubo {
	t.Helper()
	k := &Kubo{Bin: KuboBin(t), Repo: filepath.Join(t.TempDir(), "ipfs")}
	t.Cleanup(func() { k.Stop(t) })

	k.Run(t, "init", "--profile=test")
	// Ports 0 for the first start; the ports it got are written into the
	// config by Restart, so that the addresses survive a restart.
	k.setConfig(t, loopbackConfig())
	k.start(t)
	return k
}

// loopbackConfig is what keeps a test node on 127.0.0.1 and away from any
// public network: an offline node as it is, and the base of a fleet
// node's config (fleetConfig). Ports 0 for the first start; the ports it
// got are written into the config by Restart, so that the addresses
// survive a restart.
func loopbackConfig() map[string]any {
	return map[string]any{
		"Addresses.API":                         "/ip4/127.0.0.1/tcp/0",
		"Addresses.Gateway":                     "/ip4/127.0.0.1/tcp/0",
		"Addresses.Swarm":                       []string{},
		"Addresses.Announce":                    []string{},
		"Addresses.AppendAnnounce":              []string{},
		"Bootstrap":                             []string{},
		"Discovery.MDNS.Enabled":                false,
		"AutoConf.Enabled":                      false,
		"AutoTLS.Enabled":                       false,
		"Swarm.DisableNatPortMap":               true,
		"Routing.Type":                          "none",
		"Plugins.Plugins.telemetry.Config.Mode": "off",
	}
}

// Stop stops the daemon now: SIGTERM, then SIGKILL after 5 s. Tests use it
// to simulate "IPFS is down"; the API then refuses connections. It is
// idempotent. It fails the test if the daemon had exited on its own.
func (k *Kubo) Stop(t testing.TB) {
	t.Helper()
	k.mu.Lock()
	d := k.daemon
	k.daemon = nil
	k.mu.Unlock()
	if d == nil {
		return
	}
	select {
	case <-d.done:
		t.Errorf("testenv: kubo daemon exited before Stop: %v\n%s", d.err, d.out)
		return
	default:
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(kuboStopGrace):
		t.Logf("testenv: kubo daemon ignored SIGTERM for %v; killing it\n%s", kuboStopGrace, d.out)
		_ = d.cmd.Process.Kill()
		<-d.done
	}
}

// Restart starts the daemon again on the same repo, API and gateway ports
// (stopping it first if it runs). It fails the test if the ports are taken.
func (k *Kubo) Restart(t testing.TB) {
	t.Helper()
	k.Stop(t)
	values := map[string]any{
		"Addresses.API":     k.API,
		"Addresses.Gateway": httpToMultiaddr(k.Gateway),
	}
	if k.Swarm != "" {
		values["Addresses.Swarm"] = []string{k.Swarm}
	}
	k.setConfig(t, values)
	api, gw, swarm := k.API, k.Gateway, k.Swarm
	k.start(t)
	if k.API != api || k.Gateway != gw || k.Swarm != swarm {
		t.Fatalf("testenv: kubo restarted on API %s gateway %s swarm %s, want %s, %s and %s", k.API, k.Gateway, k.Swarm, api, gw, swarm)
	}
}

// Run runs the ipfs CLI with args against this repo (IPFS_PATH set; while
// the daemon runs the CLI talks to it over the API) and returns its stdout.
// It fails the test, with stderr, on a non-zero exit.
func (k *Kubo) Run(t testing.TB, args ...string) string {
	t.Helper()
	return k.run(t, nil, args...)
}

// AddFile adds the file at path (`ipfs add -Q --cid-version=1 --pin`) and
// returns its CID (v1, base32: bafy... or bafk... for raw leaves).
func (k *Kubo) AddFile(t testing.TB, path string) string {
	t.Helper()
	return strings.TrimSpace(k.Run(t, "add", "-Q", "--cid-version=1", "--pin", path))
}

// AddBytes adds b as a file and returns its CID (see AddFile).
func (k *Kubo) AddBytes(t testing.TB, b []byte) string {
	t.Helper()
	return strings.TrimSpace(k.run(t, b, "add", "-Q", "--cid-version=1", "--pin"))
}

// AddDir adds the directory dir recursively and returns the CID of its root
// (see AddFile). Hidden files are skipped, as ipfs does by default.
func (k *Kubo) AddDir(t testing.TB, dir string) string {
	t.Helper()
	return strings.TrimSpace(k.Run(t, "add", "-Q", "-r", "--cid-version=1", "--pin", dir))
}

// run runs the ipfs CLI with stdin (nil: none) and returns its stdout.
func (k *Kubo) run(t testing.TB, stdin []byte, args ...string) string {
	t.Helper()
	cmd := exec.Command(k.Bin, args...)
	cmd.Env = k.env()
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("testenv: ipfs %s: %v", strings.Join(args, " "), err)
	}
	timer := time.AfterFunc(kuboCmdTimeout, func() { _ = cmd.Process.Kill() })
	err := cmd.Wait()
	if !timer.Stop() {
		t.Fatalf("testenv: ipfs %s: timed out after %v\nstderr:\n%s%s",
			strings.Join(args, " "), kuboCmdTimeout, stderr.String(), k.daemonOutput())
	}
	if err != nil {
		t.Fatalf("testenv: ipfs %s: %v\nstderr:\n%s%s", strings.Join(args, " "), err, stderr.String(), k.daemonOutput())
	}
	return stdout.String()
}

// env is the environment of every ipfs process of k.
func (k *Kubo) env() []string {
	// Later entries win in exec.Cmd.Env.
	return append(os.Environ(), "IPFS_PATH="+k.Repo, "IPFS_TELEMETRY=off")
}

// daemonOutput returns the running daemon's output, for failure messages.
func (k *Kubo) daemonOutput() string {
	k.mu.Lock()
	d := k.daemon
	k.mu.Unlock()
	if d == nil {
		return ""
	}
	return "\ndaemon output:\n" + d.out.String()
}

// start starts the daemon and waits until it is ready and answers
// /api/v0/id, then sets API, URL and Gateway from the repo's api and gateway
// files.
func (k *Kubo) start(t testing.TB) {
	t.Helper()
	// Files a killed daemon may have left; readiness is judged by the fresh ones.
	for _, f := range []string{"api", "gateway"} {
		if err := os.Remove(filepath.Join(k.Repo, f)); err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("testenv: %v", err)
		}
	}
	d := &kuboDaemon{out: &syncBuffer{}, done: make(chan struct{})}
	args := []string{"daemon", "--offline"}
	if k.online {
		args = args[:1]
	}
	d.cmd = exec.Command(k.Bin, args...)
	d.cmd.Env = k.env()
	d.cmd.Stdout, d.cmd.Stderr = d.out, d.out
	d.cmd.WaitDelay = time.Second
	// Don't outlive a test binary that dies without cleanups (e.g. -timeout).
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := d.cmd.Start(); err != nil {
		t.Fatalf("testenv: starting ipfs daemon: %v", err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.done)
	}()
	k.mu.Lock()
	k.daemon = d
	k.mu.Unlock()

	fail := func(format string, args ...any) {
		t.Helper()
		msg := fmt.Sprintf(format, args...)
		k.Stop(t)
		t.Fatalf("testenv: kubo daemon: %s\ndaemon output:\n%s", msg, d.out)
	}
	deadline := time.Now().Add(kuboReadyTimeout)
	for !strings.Contains(d.out.String(), "Daemon is ready") {
		select {
		case <-d.done:
			k.mu.Lock()
			k.daemon = nil
			k.mu.Unlock()
			t.Fatalf("testenv: kubo daemon exited while starting: %v\ndaemon output:\n%s", d.err, d.out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			fail("not ready after %v", kuboReadyTimeout)
		}
	}

	api, err := os.ReadFile(filepath.Join(k.Repo, "api"))
	if err != nil {
		fail("%v", err)
	}
	gw, err := os.ReadFile(filepath.Join(k.Repo, "gateway"))
	if err != nil {
		fail("%v", err)
	}
	url, ok := multiaddrToHTTP(strings.TrimSpace(string(api)))
	if !ok {
		fail("api file holds %q, want /ip4/127.0.0.1/tcp/PORT", api)
	}
	k.API = strings.TrimSpace(string(api))
	k.URL = url
	k.Gateway = strings.TrimSpace(string(gw))
	if !strings.HasPrefix(k.Gateway, "http://127.0.0.1:") {
		fail("gateway file holds %q, want http://127.0.0.1:PORT", gw)
	}

	// The API answers once the daemon says it is ready; check it does.
	client := &http.Client{Timeout: 10 * time.Second}
	resp, err := client.Post(k.URL+"/api/v0/id", "", nil)
	if err != nil {
		fail("POST /api/v0/id: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		fail("POST /api/v0/id: %s", resp.Status)
	}
	if k.online {
		k.PeerID = strings.TrimSpace(k.Run(t, "id", "-f", "<id>"))
		k.Swarm = ""
		for _, a := range strings.Fields(k.Run(t, "swarm", "addrs", "listen")) {
			if strings.HasPrefix(a, "/ip4/127.0.0.1/tcp/") {
				k.Swarm = a
			}
		}
		if k.Swarm == "" || k.PeerID == "" {
			fail("online node without a loopback TCP swarm address or peer id (id %q)", k.PeerID)
		}
	}
}

// setConfig sets the dotted config keys of values in the repo's config file.
// The daemon must not be running (it would not see the change).
func (k *Kubo) setConfig(t testing.TB, values map[string]any) {
	t.Helper()
	path := filepath.Join(k.Repo, "config")
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("testenv: kubo config: %v", err)
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		t.Fatalf("testenv: kubo config %s: %v", path, err)
	}
	for key, v := range values {
		m := cfg
		parts := strings.Split(key, ".")
		for _, p := range parts[:len(parts)-1] {
			sub, ok := m[p].(map[string]any)
			if !ok {
				sub = map[string]any{}
				m[p] = sub
			}
			m = sub
		}
		m[parts[len(parts)-1]] = v
	}
	data, err = json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		t.Fatalf("testenv: kubo config: %v", err)
	}
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatalf("testenv: kubo config: %v", err)
	}
}

// multiaddrToHTTP turns /ip4/127.0.0.1/tcp/PORT into http://127.0.0.1:PORT.
func multiaddrToHTTP(maddr string) (string, bool) {
	port, ok := strings.CutPrefix(maddr, "/ip4/127.0.0.1/tcp/")
	if !ok || port == "" || strings.Trim(port, "0123456789") != "" {
		return "", false
	}
	return "http://127.0.0.1:" + port, true
}

// httpToMultiaddr turns http://127.0.0.1:PORT into /ip4/127.0.0.1/tcp/PORT.
func httpToMultiaddr(url string) string {
	return "/ip4/127.0.0.1/tcp/" + strings.TrimPrefix(url, "http://127.0.0.1:")
}
