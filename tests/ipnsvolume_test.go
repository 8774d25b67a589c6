package tests

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// TestAnIPNSVolumeFollowsItsNameAndNeverAVersionItCannotHave mounts a
// read-only volume by IPNS name and moves the name: to a new version
// (served once fetched), to a directory over max_dir_size (as a hostile
// publisher would: refused, and the version before stays mounted), and on
// to a good version again.
func TestAnIPNSVolumeFollowsItsNameAndNeverAVersionItCannotHave(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	name := k.Name(t, "site")

	version := func(text string, pad int) string {
		d := filepath.Join(t.TempDir(), "v")
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, "a.txt"), []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		if pad > 0 {
			if err := os.WriteFile(filepath.Join(d, "pad.bin"), make([]byte, pad), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		cid := k.AddDir(t, d)
		k.Run(t, "name", "publish", "--allow-offline", "--key=site", "--ttl=1s", "/ipfs/"+cid)
		return cid
	}
	version("one", 0)

	w := startWagi(t, bin, dir, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 2
[ipfs]
api = %q
ipns_ttl = "1s"
max_dir_size = "64KiB"
[[module]]
route = "/s/..."
module = "{{mods}}/static.wasm"
volumes = { "/assets" = "/ipns/%s" }
`, k.API, name))
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	// waitFor polls until the volume serves want (wall time: ipns_ttl and
	// kubo's cache; a minute is generous on a loaded machine).
	waitFor := func(want string) {
		t.Helper()
		deadline := time.Now().Add(time.Minute)
		for {
			r := c.get("/s/a.txt")
			if r.status == 200 && string(r.body) == want {
				return
			}
			if r.status != 200 {
				t.Fatalf("GET /s/a.txt: %d %q while waiting for %q", r.status, r.body, want)
			}
			if time.Now().After(deadline) {
				t.Fatalf("still %q a minute later, want %q\n%s", r.body, want, w.log)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	waitFor("one")
	version("two", 0)
	waitFor("two")

	big := version("hostile", 1<<20)
	// Requests drive the resolution: go on asking, and the previous
	// version answers every time.
	deadline := time.Now().Add(time.Minute)
	for seen := 0; seen < 20; {
		if r := c.get("/s/a.txt"); r.status != 200 || string(r.body) != "two" {
			t.Fatalf("with the name on a directory over max_dir_size: %d %q, want the previous version", r.status, r.body)
		}
		if strings.Contains(w.log.String(), "IPNS volume: no new version; the previous one stays mounted") {
			seen++ // and 20 requests more after the refusal
		}
		if time.Now().After(deadline) {
			t.Fatalf("the refusal of %s was not logged within a minute\n%s", big, w.log)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if n := strings.Count(w.log.String(), "IPFS directory refused: over its cap"); n != 1 {
		t.Errorf("the refused version was fetched %d times, want once (it is remembered)", n)
	}

	version("three", 0)
	waitFor("three")
}
