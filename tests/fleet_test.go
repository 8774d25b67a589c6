package tests

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// edgeNode is one edge node: a kubo daemon, a wagi-fcgi on it and an
// nginx in front.
type edgeNode struct {
	name string
	kubo *testenv.Kubo
	dir  string
	wagi *wagiProc
	c    *client
}

// startEdgeNode starts wagi-fcgi on k with config (its [ipfs] api is
// added) behind its own nginx.
func startEdgeNode(t *testing.T, bin, name string, k *testenv.Kubo, config string) *edgeNode {
	t.Helper()
	dir := filepath.Join(t.TempDir(), name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	config = strings.Replace(config, "[ipfs]\n", fmt.Sprintf("[ipfs]\napi = %q\n", k.API), 1)
	w := startWagi(t, bin, dir, config)
	n := startNginx(t, dir, w.sock)
	return &edgeNode{name: name, kubo: k, dir: dir, wagi: w, c: newClient(t, n.base)}
}

// textModule is a WAT module that answers text/plain text.
func textModule(t *testing.T, text string) []byte {
	t.Helper()
	out := "content-type: text/plain\n\n" + text
	return buildWAT(t, fmt.Sprintf(`(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) %q)
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const %d))
    (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))`, out, len(out)))
}

// median of ds (sorted in place).
func median(ds []time.Duration) time.Duration {
	slices.Sort(ds)
	return ds[len(ds)/2]
}

// TestAFleetSharesModulesOverIPFS runs three edge nodes (kubo + wagi-fcgi +
// nginx each) peered over loopback only. Modules published on A with
// `wagi-fcgi publish` are served by B and C (fetched by bitswap on their
// first request, then pinned where they were served); with A down, C gets
// them from B; an IPNS name published on A follows its updates on B and C;
// an MFS volume A writes and publishes is read on B and C.
func TestAFleetSharesModulesOverIPFS(t *testing.T) {
	kubos := testenv.StartFleet(t, 3)
	ka, kb, kc := kubos[0], kubos[1], kubos[2]
	work := t.TempDir()
	bin := buildBinary(t, work)

	hello, err := os.ReadFile(testenv.Module(t, "hello"))
	if err != nil {
		t.Fatal(err)
	}
	// Five CIDs of the same code, published on A alone.
	var cids []string
	for i := range 5 {
		file := filepath.Join(work, fmt.Sprintf("hello%d.wasm", i))
		if err := os.WriteFile(file, withCustomSection(hello, fmt.Sprintf("fleet%d", i), 0), 0o644); err != nil {
			t.Fatal(err)
		}
		cids = append(cids, snippetField(t, publishOK(t, bin, "--api", ka.API, file), "cid"))
	}
	version := func(n int) string {
		file := filepath.Join(work, fmt.Sprintf("v%d.wasm", n))
		if err := os.WriteFile(file, textModule(t, fmt.Sprintf("version %d\n", n)), 0o644); err != nil {
			t.Fatal(err)
		}
		return file
	}
	site := publishOK(t, bin, "--api", ka.API, "--route", "/named", "--name", "site", "--create-key", "--ttl", "1s", version(1))
	if siteName := strings.TrimPrefix(snippetField(t, site, "ipns"), "/ipns/"); !strings.Contains(site, "module = \"/ipns/"+siteName) {
		t.Fatalf("publish --name printed:\n%s\nwant a module named /ipns/%s", site, siteName)
	}

	config := fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 2
[ipfs]
fetch_timeout = "30s"
ipns_ttl = "1s"
gateway = "/ipfs/"
allow = ["%s"]
`, strings.Join(cids, `", "`)) + site
	// A writes a guestbook on its MFS and publishes it under the key
	// "book"; B and C mount the name read-only and serve its files.
	bookName := ka.Name(t, "book")
	writer := config + `
[[module]]
route = "/guestbook"
module = "{{mods}}/guestbook.wasm"
volumes = { "/data" = { source = "mfs:/wagi/guestbook", publish_ipns = "book", publish_every = "1s" } }
`
	reader := config + fmt.Sprintf(`
[[module]]
route = "/shared/..."
module = "{{mods}}/static.wasm"
volumes = { "/assets" = "/ipns/%s" }
`, bookName)

	a := startEdgeNode(t, bin, "a", ka, writer)
	b := startEdgeNode(t, bin, "b", kb, reader)
	c := startEdgeNode(t, bin, "c", kc, reader)

	for _, n := range []*edgeNode{b, c} {
		for _, cid := range cids {
			if out := n.kubo.Run(t, "refs", "local"); strings.Contains(out, cid) {
				t.Fatalf("node %s holds %s before any request: the test would prove nothing", n.name, cid)
			}
		}
	}

	t.Run("each node's status page lists its two peers", func(t *testing.T) {
		for _, n := range []*edgeNode{a, b, c} {
			var st struct {
				Peers struct {
					Count int
					Peers []struct{ ID, Addr string }
				}
			}
			r := n.c.get("/_wagi/status?json")
			if err := json.Unmarshal(r.body, &st); r.status != 200 || err != nil {
				t.Fatalf("%s status: %d %v %q", n.name, r.status, err, r.body)
			}
			if st.Peers.Count != 2 || len(st.Peers.Peers) != 2 {
				t.Fatalf("%s status lists peers %+v, want the two other nodes", n.name, st.Peers)
			}
		}
	})

	t.Run("a module only node A holds is served by B on its first request, and B pins it", func(t *testing.T) {
		var took []time.Duration
		for _, cid := range cids {
			start := time.Now()
			r := b.c.get("/ipfs/" + cid + "/")
			took = append(took, time.Since(start))
			if r.status != 200 || string(r.body) != "Hello, world!\n" {
				t.Fatalf("B /ipfs/%s/: %d %q\n%s", cid, r.status, r.body, b.wagi.log)
			}
		}
		t.Logf("first request on B of a CID only A held: median %v of %v", median(took), took)
		// Served, so kept: pinned under wagi-fcgi's name (the pinner
		// passes once a second; a minute is generous on a loaded machine).
		deadline := time.Now().Add(time.Minute)
		for {
			pins := kb.Run(t, "pin", "ls", "--type=recursive", "--names")
			missing := ""
			for _, cid := range cids {
				if !strings.Contains(pins, cid+" recursive wagi-fcgi:served") {
					missing = cid
				}
			}
			if missing == "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("B has not pinned the served %s a minute later; pins:\n%s\nB:\n%s", missing, pins, b.wagi.log)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("an IPNS name published on A is followed by B and C", func(t *testing.T) {
		for _, n := range []*edgeNode{b, c} {
			if r := n.c.get("/named"); r.status != 200 || string(r.body) != "version 1\n" {
				t.Fatalf("%s /named: %d %q\n%s", n.name, r.status, r.body, n.wagi.log)
			}
		}
		publishOK(t, bin, "--api", ka.API, "--route", "/named", "--name", "site", "--ttl", "1s", version(2))
		published := time.Now()
		for _, n := range []*edgeNode{b, c} {
			for {
				r := n.c.get("/named")
				if r.status == 200 && string(r.body) == "version 2\n" {
					t.Logf("IPNS update on A to its first request served at the new version on %s: %v", n.name, time.Since(published))
					break
				}
				if r.status != 200 || string(r.body) != "version 1\n" {
					t.Fatalf("%s /named during the update: %d %q", n.name, r.status, r.body)
				}
				// ipns_ttl (1 s) + kubo's cache (Ipns.MaxCacheTTL 1 s) + pubsub;
				// a minute is the generous bound of a wall-time test.
				if time.Since(published) > time.Minute {
					t.Fatalf("%s still serves version 1 a minute after the update\n%s", n.name, n.wagi.log)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
	})
	t.Run("an MFS volume written on A is read on B and C through its IPNS name", func(t *testing.T) {
		want := ""
		for round := 1; round <= 2; round++ {
			entry := fmt.Sprintf("entry %d", round)
			if r := a.c.do("POST", "/guestbook", []byte(entry)); r.status != 200 {
				t.Fatalf("A POST /guestbook: %d %q", r.status, r.body)
			}
			want += entry + "\n"
			written := time.Now()
			for _, n := range []*edgeNode{b, c} {
				for {
					r := n.c.get("/shared/guestbook.txt")
					if r.status == 200 && string(r.body) == want {
						t.Logf("write %d on A to its first read on %s: %v", round, n.name, time.Since(written))
						break
					}
					// publish_every (1 s) + ipns_ttl (1 s) + kubo's cache (1 s);
					// a minute is the generous bound of a wall-time test.
					if time.Since(written) > time.Minute {
						t.Fatalf("%s: GET /shared/guestbook.txt = %d %q a minute after the write, want %q\nA:\n%s\n%s:\n%s",
							n.name, r.status, r.body, want, a.wagi.log, n.name, n.wagi.log)
					}
					time.Sleep(100 * time.Millisecond)
				}
			}
		}
		a.wagi.log.waitFor(t, 5*time.Second, "MFS volume published", bookName)
	})

	t.Run("with A down, C gets the module from B", func(t *testing.T) {
		ka.Stop(t)
		var took []time.Duration
		kb.Run(t, "repo", "gc") // what B keeps, it keeps by its pins
		for _, cid := range cids {
			start := time.Now()
			r := c.c.get("/ipfs/" + cid + "/")
			took = append(took, time.Since(start))
			if r.status != 200 || string(r.body) != "Hello, world!\n" {
				t.Fatalf("C /ipfs/%s/ with A down: %d %q\n%s", cid, r.status, r.body, c.wagi.log)
			}
		}
		t.Logf("first request on C of a CID only B held (A down): median %v of %v", median(took), took)
		ka.Restart(t)
		ka.WaitPeers(t, 2)
		kb.WaitPeers(t, 2)
		kc.WaitPeers(t, 2)
	})

}
