package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// TestPinning runs a node whose kubo garbage-collects: what the config
// names and what was served recently stays pinned under wagi-fcgi's pin
// names and survives `ipfs repo gc`; what the config drops and was not
// served within pin_recent is unpinned; an operator's own pin is never
// touched; a gateway client cannot make the node pin what is not a module.
func TestPinning(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	mods := testenv.Modules(t)

	// Added without a pin: only wagi-fcgi's pins keep these from gc.
	notWasmFile := filepath.Join(dir, "notwasm.txt")
	if err := os.WriteFile(notWasmFile, []byte("not a module, but allowed\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hello := addUnpinned(t, k, filepath.Join(mods, "hello.wasm"))  // the config's, kept
	dropped := addUnpinned(t, k, filepath.Join(mods, "env.wasm"))  // the config's, then dropped
	served := addUnpinned(t, k, filepath.Join(mods, "echo.wasm"))  // a gateway CID, served
	older := addUnpinned(t, k, filepath.Join(mods, "stderr.wasm")) // a gateway CID served before it: past pin_max
	notWasm := addUnpinned(t, k, notWasmFile)                      // a gateway CID that is no module
	assets := filepath.Join(dir, "assets")
	if err := os.MkdirAll(assets, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(assets, "a.txt"), []byte("an asset\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	volume := strings.TrimSpace(k.Run(t, "add", "-Q", "-r", "--cid-version=1", "--pin=false", assets)) // a read-only volume of the config's
	operator := k.AddFile(t, filepath.Join(mods, "raw.wasm"))                                          // pinned by the operator, without a name

	config := func(recent string, withDropped bool) string {
		extra := ""
		if withDropped {
			extra = fmt.Sprintf(`
[[module]]
route = "/drop"
module = "ipfs://%s"

[[module]]
route = "/op"
module = "ipfs://%s"
`, dropped, operator)
		}
		return fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
status_path = "/_wagi/status"

[pool]
children = 2

[ipfs]
api = %q
fetch_timeout = "20s"
gateway = "/ipfs/"
allow = [%q, %q, %q]
pin_recent = %q
pin_max = 1

[[module]]
route = "/hello"
module = "ipfs://%s"
volumes = { "/assets" = "ipfs://%s" }
%s`, k.API, served, older, notWasm, recent, hello, volume, extra)
	}
	top := t // the server outlives the subtest that restarts it
	w := startWagi(t, bin, dir, config("1h", true))
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	blockHere := func(cid string) bool {
		cmd := exec.Command(k.Bin, "block", "stat", "--offline", cid)
		cmd.Env = append(os.Environ(), "IPFS_PATH="+k.Repo, "IPFS_TELEMETRY=off")
		return cmd.Run() == nil
	}

	t.Run("the modules the config names are pinned under wagi-fcgi's name", func(t *testing.T) {
		p := waitPins(t, k, w, "config modules", func(p map[string]string) bool {
			return p[hello] == "wagi-fcgi:/hello" && p[dropped] == "wagi-fcgi:/drop" && p[volume] == "wagi-fcgi:/hello"
		})
		if name, ok := p[operator]; !ok || name != "" {
			t.Fatalf("the operator's pin of %s became %q (present %v), want it unnamed as the operator made it", operator, name, ok)
		}
	})

	t.Run("a gateway CID served is pinned, within pin_max; an allowed CID that is no module is not", func(t *testing.T) {
		if r := c.get("/ipfs/" + older + "/"); r.status != 200 {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		if r := c.do("POST", "/ipfs/"+served+"/x", []byte("kept")); r.status != 200 || string(r.body) != "kept" {
			t.Fatalf("got %d %q", r.status, r.body)
		}
		if r := c.get("/ipfs/" + notWasm + "/"); r.status == 200 {
			t.Fatalf("a CID that is no module answered %d", r.status)
		}
		if r := c.get("/drop"); r.status != 200 {
			t.Fatalf("/drop: %d %q", r.status, r.body)
		}
		// pin_max = 1: only the most recently served of the two.
		p := waitPins(t, k, w, "served CID", func(p map[string]string) bool {
			_, o := p[older]
			return p[served] == "wagi-fcgi:served" && !o
		})
		if _, ok := p[notWasm]; ok {
			t.Fatalf("an allowed CID that is no module was pinned: %v", p)
		}
	})

	t.Run("ipfs repo gc keeps what wagi-fcgi pinned and drops what nobody pinned", func(t *testing.T) {
		k.Run(t, "repo", "gc")
		for _, cid := range []string{hello, served, dropped, operator, volume} {
			if !blockHere(cid) {
				t.Errorf("%s is gone after gc", cid)
			}
		}
		for _, cid := range []string{notWasm, older} {
			if blockHere(cid) {
				t.Errorf("the unpinned %s survived gc", cid)
			}
		}
		if r := c.do("POST", "/ipfs/"+served+"/x", []byte("still")); r.status != 200 || string(r.body) != "still" {
			t.Fatalf("after gc: %d %q", r.status, r.body)
		}
	})

	t.Run("the status page lists the pins and the node's peers", func(t *testing.T) {
		r := c.get("/_wagi/status?json")
		if r.status != 200 {
			t.Fatalf("status: %d", r.status)
		}
		var st struct {
			Pinning *struct {
				On   bool `json:"on"`
				Pins []struct {
					CID, Why, Pinned, Owner string
				} `json:"pins"`
			} `json:"pinning"`
			Peers *struct {
				Count int               `json:"count"`
				Peers []json.RawMessage `json:"peers"`
			} `json:"peers"`
		}
		if err := json.Unmarshal(r.body, &st); err != nil {
			t.Fatalf("%v: %s", err, r.body)
		}
		if st.Pinning == nil || !st.Pinning.On || st.Peers == nil || st.Peers.Count != 0 || st.Peers.Peers == nil {
			t.Fatalf("want pinning on and an empty peers list (an offline node):\n%s", r.body)
		}
		want := map[string][3]string{
			hello:    {"config /hello", "yes", "wagi-fcgi"},
			dropped:  {"config /drop", "yes", "wagi-fcgi"},
			operator: {"config /op", "yes", "other"},
			served:   {"served", "yes", "wagi-fcgi"},
			volume:   {"config /hello volume /assets", "yes", "wagi-fcgi"},
		}
		for _, p := range st.Pinning.Pins {
			if w, ok := want[p.CID]; ok {
				if got := [3]string{p.Why, p.Pinned, p.Owner}; got != w {
					t.Errorf("%s: got %v, want %v", p.CID, got, w)
				}
				delete(want, p.CID)
			}
		}
		if len(want) > 0 {
			t.Errorf("not listed: %v\n%s", want, r.body)
		}
		om := c.get("/_wagi/status?openmetrics")
		for _, s := range []string{`wagi_ipfs_pins{state="yes"} 5`, "wagi_ipfs_peers 0"} {
			if om.status != 200 || !strings.Contains(string(om.body), s) {
				t.Errorf("openmetrics has no %q: %d\n%s", s, om.status, om.body)
			}
		}
		text := c.get("/_wagi/status")
		for _, s := range []string{"pinning:              on", "peers:                0\n", "pin:                  " + served, "why:                  served"} {
			if !strings.Contains(string(text.body), s) {
				t.Errorf("the text status has no %q:\n%s", s, text.body)
			}
		}
	})

	t.Run("the served CIDs are kept in state_dir", func(t *testing.T) {
		deadline := time.Now().Add(30 * time.Second)
		for {
			b, _ := os.ReadFile(filepath.Join(dir, "state", "pins-served.json"))
			if strings.Contains(string(b), "/ipfs/"+served) {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("pins-served.json: %s", b)
			}
			time.Sleep(100 * time.Millisecond)
		}
	})

	t.Run("a restart forgets nothing: a CID served before it stays pinned", func(t *testing.T) {
		w.stop(t)
		w = startWagi(top, bin, dir, config("1h", true))
		// The status page lists pins once the new process's pinner has
		// made a pass; the served CID is among them only if the book in
		// state_dir was read back.
		deadline := time.Now().Add(60 * time.Second)
		for {
			body := string(c.get("/_wagi/status").body)
			if strings.Contains(body, "pin:                  "+served+"\npath:                 /ipfs/"+served+"\nwhy:                  served\nlast served:") {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after a restart the served CID is not listed:\n%s\nlog:\n%s", body, w.log)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if p := recursivePins(t, k); p[served] != "wagi-fcgi:served" {
			t.Fatalf("after a restart: %v", p)
		}
	})

	t.Run("a reload that drops a module unpins it after pin_recent, and never the operator's pin", func(t *testing.T) {
		// The operator pins a CID wagi-fcgi pinned: kubo renames the pin,
		// and from then on it is the operator's.
		k.Run(t, "pin", "add", served)
		if p := recursivePins(t, k); p[served] != "" {
			t.Fatalf("after the operator's pin add: %q, want the operator's unnamed pin", p[served])
		}
		if err := os.WriteFile(filepath.Join(dir, "wagi.toml"), []byte(expand(t, config("2s", false), dir)), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := w.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		w.log.waitFor(t, 30*time.Second, "reloaded")
		p := waitPins(t, k, w, "after the reload", func(p map[string]string) bool {
			_, d := p[dropped]
			return !d
		})
		if p[hello] != "wagi-fcgi:/hello" {
			t.Errorf("the module the config still names lost its pin: %v", p)
		}
		for _, cid := range []string{operator, served} {
			if name, ok := p[cid]; !ok || name != "" {
				t.Errorf("the operator's pin of %s was touched: %q (present %v)", cid, name, ok)
			}
		}
		w.log.waitFor(t, 5*time.Second, "unpinned", dropped)
	})

	t.Run("with kubo down the modules still serve, the status page answers, and pinning resumes when it is back", func(t *testing.T) {
		if r := c.get("/hello"); r.status != 200 {
			t.Fatalf("/hello: %d %q", r.status, r.body)
		}
		k.Stop(t)
		if r := c.get("/hello"); r.status != 200 {
			t.Fatalf("/hello with kubo down: %d %q", r.status, r.body)
		}
		r := c.get("/_wagi/status?json")
		if r.status != 200 || !strings.Contains(string(r.body), `"peers"`) {
			t.Fatalf("status with kubo down: %d %s", r.status, r.body)
		}
		// pin_recent is 2s since the reload: a pass every second.
		w.log.waitFor(t, 30*time.Second, "pinning paused")
		k.Restart(t)
		w.log.waitFor(t, 90*time.Second, "pinning resumed")
		if n := strings.Count(w.log.String(), "pinning paused"); n != 1 {
			t.Errorf("logged %d times that pinning paused, want once", n)
		}
	})
}

// TestPinningFollowsAnIPNSName: the CID an IPNS name resolves to is the
// one pinned; when the name moves, the new CID is pinned and the old one
// follows the served-window rule.
func TestPinningFollowsAnIPNSName(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	mods := testenv.Modules(t)
	first := addUnpinned(t, k, filepath.Join(mods, "hello.wasm"))
	second := addUnpinned(t, k, filepath.Join(mods, "echo.wasm"))
	name := strings.TrimSpace(k.Run(t, "id", "-f", "<id>"))
	k.Run(t, "name", "publish", "--allow-offline", "--key", "self", "/ipfs/"+first)

	w := startWagi(t, bin, dir, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 1

[ipfs]
api = %q
ipns_ttl = "1s"
pin_recent = "2s"

[[module]]
route = "/named"
module = "/ipns/%s"
`, k.API, name))
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	waitPins(t, k, w, "the CID the name resolves to is pinned", func(p map[string]string) bool { return p[first] == "wagi-fcgi:/named" })
	if r := c.get("/named"); r.status != 200 || string(r.body) != "Hello, world!\n" {
		t.Fatalf("got %d %q", r.status, r.body)
	}

	// Served under the CID the name resolved to, so that CID follows the
	// served-window rule once the name moves.
	deadline := time.Now().Add(30 * time.Second)
	for {
		b, _ := os.ReadFile(filepath.Join(dir, "state", "pins-served.json"))
		if strings.Contains(string(b), `"/ipfs/`+first+`"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the IPNS module's CID is not recorded as served: %s", b)
		}
		time.Sleep(100 * time.Millisecond)
	}
	k.Run(t, "name", "publish", "--allow-offline", "--key", "self", "/ipfs/"+second)
	waitPins(t, k, w, "the name's new CID is pinned", func(p map[string]string) bool { return p[second] == "wagi-fcgi:/named" })
	waitPins(t, k, w, "the name's old CID, served more than pin_recent ago, is unpinned", func(p map[string]string) bool {
		_, ok := p[first]
		return !ok
	})
	w.log.waitFor(t, 5*time.Second, "unpinned", first)
}

// addUnpinned adds the file at path without pinning it (CIDv1) and returns
// its CID: only a pin of wagi-fcgi's then keeps it from `ipfs repo gc`.
func addUnpinned(t testing.TB, k *testenv.Kubo, path string) string {
	t.Helper()
	return strings.TrimSpace(k.Run(t, "add", "-Q", "--cid-version=1", "--pin=false", path))
}

// recursivePins lists the node's recursive pins, CID → pin name.
func recursivePins(t testing.TB, k *testenv.Kubo) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range strings.Split(strings.TrimSpace(k.Run(t, "pin", "ls", "--type=recursive", "--names")), "\n") {
		if f := strings.Fields(line); len(f) >= 2 {
			out[f[0]] = strings.Join(f[2:], " ")
		}
	}
	return out
}

// waitPins polls the node's recursive pins until ok says they are as
// wanted, and returns them.
func waitPins(t testing.TB, k *testenv.Kubo, w *wagiProc, what string, ok func(map[string]string) bool) map[string]string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		p := recursivePins(t, k)
		if ok(p) {
			return p
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: pins are %v\nlog:\n%s", what, p, w.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestCheckNeverChangesWhatTheNodePins checks a config beside a running
// server's kubo node: `wagi-fcgi check` loads every module, but pins
// nothing, unpins nothing (not even a wagi-fcgi pin its config does not
// explain) and writes no served-CIDs file: the config under review must
// not change what the running server keeps.
func TestCheckNeverChangesWhatTheNodePins(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	mods := testenv.Modules(t)
	hello := addUnpinned(t, k, filepath.Join(mods, "hello.wasm"))
	served := addUnpinned(t, k, filepath.Join(mods, "echo.wasm"))
	k.Run(t, "pin", "add", "--name", "wagi-fcgi:served", served) // the running server's

	cfg := filepath.Join(dir, "wagi.toml")
	if err := os.WriteFile(cfg, []byte(fmt.Sprintf(`
listen = "unix:%s/wagi.sock"
state_dir = "%s/state"
[ipfs]
api = %q
[[module]]
route = "/hello"
module = "ipfs://%s"
`, dir, dir, k.API, hello)), 0o644); err != nil {
		t.Fatal(err)
	}
	makeReachable(t, dir)
	out, errs, code := runBin(t, bin, nil, "check", "-c", cfg)
	if code != 0 {
		t.Fatalf("check: exit %d\n%s%s", code, out, errs)
	}
	// A pass of a pinner, had one run, takes milliseconds; give it time
	// to show.
	time.Sleep(2 * time.Second)
	pins := k.Run(t, "pin", "ls", "--type=recursive", "--names")
	if strings.Contains(pins, hello) {
		t.Errorf("check pinned the module it checked:\n%s", pins)
	}
	if !strings.Contains(pins, served+" recursive wagi-fcgi:served") {
		t.Errorf("check removed the running server's pin of %s:\n%s", served, pins)
	}
	if _, err := os.Stat(filepath.Join(dir, "state", "pins-served.json")); err == nil {
		t.Errorf("check wrote the served-CIDs file of the state_dir")
	}
}
