package testenv_test

import (
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

func TestKubo(t *testing.T) {
	k := testenv.StartKubo(t)
	if !strings.HasPrefix(k.API, "/ip4/127.0.0.1/tcp/") || !strings.HasPrefix(k.URL, "http://127.0.0.1:") ||
		!strings.HasPrefix(k.Gateway, "http://127.0.0.1:") {
		t.Fatalf("API %q URL %q Gateway %q, want loopback addresses", k.API, k.URL, k.Gateway)
	}
	if v := strings.TrimSpace(k.Run(t, "version")); v != "ipfs version 0.42.0" {
		t.Errorf("ipfs version = %q, want ipfs version 0.42.0", v)
	}

	// Offline, loopback only: no swarm listeners, no peers, no bootstrap.
	if out := strings.TrimSpace(k.Run(t, "bootstrap", "list")); out != "" {
		t.Errorf("bootstrap list = %q, want empty", out)
	}
	if out := k.Run(t, "config", "Routing.Type"); strings.TrimSpace(out) != "none" {
		t.Errorf("Routing.Type = %q, want none", out)
	}

	content := []byte("hello from kubo\n")
	cid := k.AddBytes(t, content)
	if !strings.HasPrefix(cid, "baf") {
		t.Errorf("AddBytes CID = %q, want a base32 CIDv1 (baf...)", cid)
	}
	if got := k.Run(t, "cat", cid); got != string(content) {
		t.Errorf("ipfs cat = %q, want %q", got, content)
	}
	if got := catHTTP(t, k, cid); got != string(content) {
		t.Errorf("POST /api/v0/cat = %q, want %q", got, content)
	}
	if got := k.Run(t, "pin", "ls", "--type=recursive", "-q"); !strings.Contains(got, cid) {
		t.Errorf("pin ls = %q, want it to hold %s", got, cid)
	}

	// AddFile gives the same CID for the same bytes; AddDir a directory root.
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "a.txt"), content, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "sub", "b.txt"), []byte("b\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if got := k.AddFile(t, filepath.Join(dir, "a.txt")); got != cid {
		t.Errorf("AddFile CID = %q, want %q (as AddBytes)", got, cid)
	}
	root := k.AddDir(t, dir)
	if got := k.Run(t, "cat", root+"/sub/b.txt"); got != "b\n" {
		t.Errorf("ipfs cat %s/sub/b.txt = %q, want %q", root, got, "b\n")
	}

	// MFS.
	k.Run(t, "files", "write", "--create", "--parents", "/t/x", filepath.Join(dir, "a.txt"))
	if got := k.Run(t, "files", "read", "/t/x"); got != string(content) {
		t.Errorf("ipfs files read /t/x = %q, want %q", got, content)
	}

	// Down: the API refuses connections.
	k.Stop(t)
	k.Stop(t) // idempotent
	if _, err := (&http.Client{Timeout: 5 * time.Second}).Post(k.URL+"/api/v0/id", "", nil); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Errorf("POST /api/v0/id on a stopped daemon: err = %v, want connection refused", err)
	}

	// Up again, same addresses, same content.
	api, url := k.API, k.URL
	k.Restart(t)
	if k.API != api || k.URL != url {
		t.Errorf("after Restart API %q URL %q, want %q %q", k.API, k.URL, api, url)
	}
	if got := catHTTP(t, k, cid); got != string(content) {
		t.Errorf("after Restart: POST /api/v0/cat = %q, want %q", got, content)
	}
	if got := k.Run(t, "files", "read", "/t/x"); got != string(content) {
		t.Errorf("after Restart: ipfs files read /t/x = %q, want %q", got, content)
	}
	resp, err := http.Get(k.Gateway + "/ipfs/" + cid)
	if err != nil {
		t.Fatalf("gateway GET: %v", err)
	}
	body, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || string(body) != string(content) {
		t.Errorf("gateway GET /ipfs/%s = %s %q (err %v), want 200 %q", cid, resp.Status, body, err, content)
	}
}

// catHTTP fetches cid with a raw RPC call, POST /api/v0/cat?arg=<cid>.
func catHTTP(t *testing.T, k *testenv.Kubo, cid string) string {
	t.Helper()
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Post(k.URL+"/api/v0/cat?arg="+cid, "", nil)
	if err != nil {
		t.Fatalf("POST /api/v0/cat: %v", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("POST /api/v0/cat: reading the body: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("POST /api/v0/cat: %s: %s", resp.Status, body)
	}
	return string(body)
}

func TestStartFleet(t *testing.T) {
	nodes := testenv.StartFleet(t, 3)
	for _, k := range nodes {
		if got := len(k.Peers(t)); got != 2 {
			t.Errorf("node %s has %d peers, want 2", k.PeerID, got)
		}
		if out := strings.TrimSpace(k.Run(t, "bootstrap", "list")); out != "" {
			t.Errorf("bootstrap list = %q, want empty", out)
		}
	}
	a, b, c := nodes[0], nodes[1], nodes[2]

	// Blocks travel by bitswap between peers, with no routing.
	cid := a.AddBytes(t, []byte("only on A\n"))
	if got := b.Run(t, "cat", cid); got != "only on A\n" {
		t.Errorf("B: ipfs cat = %q", got)
	}
	// With A down, C gets it from B.
	a.Stop(t)
	if got := c.Run(t, "cat", cid); got != "only on A\n" {
		t.Errorf("C with A down: ipfs cat = %q", got)
	}
	a.Restart(t)
	a.WaitPeers(t, 2)

	// IPNS: a name published on A resolves on B, and follows; the record
	// is in the fleet's DHT, so it resolves even once its publisher has
	// restarted (and forgotten its pubsub subscriptions).
	name := a.Name(t, "site")
	a.Run(t, "name", "publish", "--key=site", "--ttl=1s", "/ipfs/"+cid)
	a.Restart(t)
	a.WaitPeers(t, 2)
	if got := strings.TrimSpace(b.Run(t, "name", "resolve", "/ipns/"+name)); got != "/ipfs/"+cid {
		t.Errorf("B: name resolve = %q, want /ipfs/%s", got, cid)
	}
	cid2 := a.AddBytes(t, []byte("v2\n"))
	a.Run(t, "name", "publish", "--key=site", "--ttl=1s", "/ipfs/"+cid2)
	deadline := time.Now().Add(30 * time.Second)
	for strings.TrimSpace(c.Run(t, "name", "resolve", "/ipns/"+name)) != "/ipfs/"+cid2 {
		if time.Now().After(deadline) {
			t.Fatalf("C: name still resolves to the old CID after 30 s")
		}
		time.Sleep(100 * time.Millisecond)
	}
}
