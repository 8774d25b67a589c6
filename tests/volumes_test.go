package tests

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// hostUsage is what a local volume directory holds: regular-file bytes and
// entries (the quota's own figure file left out).
func hostUsage(t *testing.T, dir string) (bytes, files int64) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir || p == filepath.Join(dir, ".wagi-usage") {
			return nil
		}
		files++
		if d.Type().IsRegular() {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			bytes += fi.Size()
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return bytes, files
}

// mfsUsage is what an MFS directory holds, from `ipfs files ls -l`.
func mfsUsage(t *testing.T, k *testenv.Kubo, dir string) (bytes, files int64) {
	t.Helper()
	for _, line := range strings.Split(strings.TrimSpace(k.Run(t, "files", "ls", "-l", dir)), "\n") {
		if line == "" {
			continue
		}
		f := strings.Fields(line)
		n, err := strconv.ParseInt(f[len(f)-1], 10, 64)
		if err != nil {
			t.Fatalf("ipfs files ls -l: %q", line)
		}
		if strings.HasSuffix(f[0], "/") {
			b, fl := mfsUsage(t, k, dir+"/"+strings.TrimSuffix(f[0], "/"))
			bytes, files = bytes+b, files+fl
		} else {
			bytes += n
		}
		files++
	}
	return bytes, files
}

// quotaAnswer requests path and checks the module answered 200 with a body
// matching want (a regexp); it returns the submatches.
func quotaAnswer(t *testing.T, c *client, path, want string) []string {
	t.Helper()
	r := c.get(path)
	body := strings.TrimSpace(string(r.body))
	m := regexp.MustCompile("^" + want + "$").FindStringSubmatch(body)
	if r.status != 200 || m == nil {
		t.Fatalf("GET %s: %d %q, want 200 %q", path, r.status, body, want)
	}
	return m
}

func TestVolumeQuotas(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	for _, d := range []string{"data", "files", "race"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
		childWritable(t, filepath.Join(dir, d))
	}
	config := fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 3

[limits]
volume_bytes = "1MiB"
volume_files = 20

[ipfs]
api = %q

[[module]]
route = "/q"
module = "{{mods}}/quota.wasm"
volumes = { "/data" = "{{dir}}/data" }

[[module]]
route = "/read/..."
module = "{{mods}}/files.wasm"
volumes = { "/data" = "{{dir}}/data:ro" }

[[module]]
route = "/qf"
module = "{{mods}}/quota.wasm"
volumes = { "/data" = "{{dir}}/files" }

[[module]]
route = "/race"
module = "{{mods}}/quota.wasm"
volumes = { "/data" = "{{dir}}/race" }

[[module]]
route = "/mfs"
module = "{{mods}}/quota.wasm"
volumes = { "/data" = "mfs:/wagi/quota" }

[[module]]
route = "/mfsfiles"
module = "{{mods}}/quota.wasm"
volumes = { "/data" = "mfs:/wagi/quotafiles" }

[[module]]
route = "/big"
module = "{{mods}}/quota.wasm"
volume_bytes = "4MiB"
volumes = { "/data" = "{{dir}}/big" }

[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"
`, k.API)
	if err := os.MkdirAll(filepath.Join(dir, "big"), 0o755); err != nil {
		t.Fatal(err)
	}
	childWritable(t, filepath.Join(dir, "big"))
	w := startWagi(t, bin, dir, config)
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	t.Run("a module writing past the byte quota gets ENOSPC and answers", func(t *testing.T) {
		quotaAnswer(t, c, "/q?write&/data/big&3145728&65536", `wrote 1048576 write ENOSPC close OK`)
		if b, _ := hostUsage(t, filepath.Join(dir, "data")); b > 1<<20 {
			t.Fatalf("the volume holds %d bytes, over its 1 MiB quota", b)
		}
		if r := c.get("/hello"); r.status != 200 {
			t.Fatalf("another module: %d", r.status)
		}
		// Still readable, by this module's neighbour too.
		if r := c.get("/read?read&/data/big"); r.status != 200 || len(r.body) != 1<<20 {
			t.Fatalf("reading the full volume: %d, %d bytes", r.status, len(r.body))
		}
		// The quota's figure file is not the guests' to see.
		if r := c.get("/read?ls&/data"); r.status != 200 || string(r.body) != "big\n" {
			t.Fatalf("listing the volume: %d %q, want only big", r.status, r.body)
		}
		quotaAnswer(t, c, "/q?truncate&/data/big&1048577", `truncate ENOSPC close OK`)
		quotaAnswer(t, c, "/q?append&/data/big&1&1", `wrote 0 write ENOSPC close OK`)
		// Deleting frees the room.
		quotaAnswer(t, c, "/q?rm&/data/big", `rm OK`)
		quotaAnswer(t, c, "/q?write&/data/again&1048576&65536", `wrote 1048576 write OK close OK`)
	})

	t.Run("a module's volume_bytes overrides the default", func(t *testing.T) {
		quotaAnswer(t, c, "/big?write&/data/x&8388608&65536", `wrote 4194304 write ENOSPC close OK`)
	})

	t.Run("creating files past the file quota gets ENOSPC", func(t *testing.T) {
		quotaAnswer(t, c, "/qf?create&/data&100", `created 20 ENOSPC`)
		quotaAnswer(t, c, "/qf?mkdir&/data/d", `mkdir ENOSPC`)
		if _, f := hostUsage(t, filepath.Join(dir, "files")); f != 20 {
			t.Fatalf("the volume holds %d entries, want 20", f)
		}
		quotaAnswer(t, c, "/qf?rm&/data/f0", `rm OK`)
		quotaAnswer(t, c, "/qf?mkdir&/data/d", `mkdir OK`)
	})

	t.Run("concurrent writers in several children share one quota", func(t *testing.T) {
		const writers = 3
		var wg sync.WaitGroup
		wrote := make([]int64, writers)
		for i := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				m := quotaAnswer(t, c, fmt.Sprintf("/race?write&/data/w%d&1048576&1024", i), `wrote (\d+) write (OK|ENOSPC) close OK`)
				wrote[i], _ = strconv.ParseInt(m[1], 10, 64)
			}()
		}
		wg.Wait()
		total := wrote[0] + wrote[1] + wrote[2]
		b, _ := hostUsage(t, filepath.Join(dir, "race"))
		if total > 1<<20 || b != total || total < 1<<20-writers*1024 {
			t.Fatalf("writers wrote %v (total %d), the volume holds %d bytes; quota 1 MiB", wrote, total, b)
		}
	})

	t.Run("an MFS volume refuses writes past its byte quota", func(t *testing.T) {
		quotaAnswer(t, c, "/mfs?write&/data/big&3145728&65536", `wrote 1048576 write ENOSPC close OK`)
		if b, _ := mfsUsage(t, k, "/wagi/quota"); b != 1<<20 {
			t.Fatalf("the MFS volume holds %d bytes, want the 1 MiB that fit", b)
		}
		quotaAnswer(t, c, "/mfs?write&/data/more&1&1", `wrote 0 write ENOSPC close OK`)
		quotaAnswer(t, c, "/mfs?truncate&/data/big&1048577", `truncate ENOSPC close OK`)
		quotaAnswer(t, c, "/mfs?rm&/data/big", `rm OK`)
		quotaAnswer(t, c, "/mfs?write&/data/more&1000&100", `wrote 1000 write OK close OK`)
	})

	t.Run("an MFS volume refuses files past its file quota", func(t *testing.T) {
		quotaAnswer(t, c, "/mfsfiles?create&/data&100", `created 20 ENOSPC`)
		if _, f := mfsUsage(t, k, "/wagi/quotafiles"); f != 20 {
			t.Fatalf("the MFS volume holds %d entries, want 20", f)
		}
		quotaAnswer(t, c, "/mfsfiles?rm&/data/f3", `rm OK`)
		quotaAnswer(t, c, "/mfsfiles?mkdir&/data/d", `mkdir OK`)
		quotaAnswer(t, c, "/mfsfiles?mkdir&/data/e", `mkdir ENOSPC`)
	})

	t.Run("concurrent MFS writers leave the volume within its quota", func(t *testing.T) {
		// The /mfs module's volume, emptied first. Each writer tries 3 MiB
		// (9 MiB in all); each can buffer at most the 1 MiB quota, and a
		// write-back that grows the volume is checked against a fresh walk
		// of it, and undone if the volume is then over its quota.
		k.Run(t, "files", "mkdir", "-p", "/wagi/quota")
		k.Run(t, "files", "rm", "-r", "/wagi/quota")
		const writers = 3
		var wg sync.WaitGroup
		for i := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				quotaAnswer(t, c, fmt.Sprintf("/mfs?write&/data/r%d&3145728&65536", i), `wrote \d+ write (OK|ENOSPC) close (OK|ENOSPC)`)
			}()
		}
		wg.Wait()
		b, _ := mfsUsage(t, k, "/wagi/quota")
		if b > 1<<20 {
			t.Fatalf("the MFS volume holds %d bytes, over its 1 MiB quota", b)
		}
		t.Logf("%d writers of 3 MiB each left %d bytes in a 1 MiB MFS volume", writers, b)
		// Once the writers' files are removed, the whole quota is usable.
		for i := range writers {
			quotaAnswer(t, c, fmt.Sprintf("/mfs?rm&/data/r%d", i), `rm (OK|ENOENT)`)
		}
		quotaAnswer(t, c, "/mfs?write&/data/after&1048576&65536", `wrote 1048576 write OK close OK`)
	})
}

func TestMFSTimesSeenByAGuest(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	w := startWagi(t, bin, dir, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[ipfs]
api = %q
[[module]]
route = "/mfs"
module = "{{mods}}/quota.wasm"
volumes = { "/data" = "mfs:/wagi/times" }
`, k.API))
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)
	before := time.Now().Add(-time.Minute).Unix()
	m := quotaAnswer(t, c, "/mfs?mtime&/data/t.txt",
		`new-fstat (\d+) OK stat (\d+) OK futimens OK fstat (\d+\.\d+) OK stat (\d+\.\d+) OK`)
	after := time.Now().Add(time.Minute).Unix()
	for i, what := range []string{"fstat of the new file", "stat after its close"} {
		if sec, _ := strconv.ParseInt(m[1+i], 10, 64); sec < before || sec > after {
			t.Errorf("%s: mtime %d, want about now (%d..%d)", what, sec, before, after)
		}
	}
	if m[3] != "1234567890.500000000" {
		t.Errorf("fstat on the handle futimens set: mtime %s, want 1234567890.500000000", m[3])
	}
	if m[4] != "1234567890.500000000" {
		t.Errorf("stat after futimens: mtime %s, want 1234567890.500000000", m[4])
	}
}

func TestCheckAndServeRefuseAReadOnlyVolumeInsideAWritableOne(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	if err := os.MkdirAll(filepath.Join(dir, "vol", "ro"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg := filepath.Join(dir, "wagi.toml")
	text := expand(t, `listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[[module]]
route = "/x"
module = "{{mods}}/files.wasm"
volumes = { "/data" = "vol", "/data/ro" = "vol/ro:ro" }
`, dir)
	if err := os.WriteFile(cfg, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"check", "-c", cfg}, {"serve", "-c", cfg}} {
		cmd := exec.Command(bin, args...)
		done := make(chan struct{})
		var out []byte
		var err error
		go func() { out, err = cmd.CombinedOutput(); close(done) }()
		select {
		case <-done:
		case <-time.After(20 * time.Second):
			_ = cmd.Process.Kill()
			<-done
			t.Fatalf("%s kept running with the config:\n%s", args[0], out)
		}
		if err == nil {
			t.Fatalf("%s accepted the config:\n%s", args[0], out)
		}
		for _, want := range []string{"wagi.toml:7:", `"/data/ro"`, `"/data"`, "read-only", "writable"} {
			if !strings.Contains(string(out), want) {
				t.Errorf("%s output lacks %q:\n%s", args[0], want, out)
			}
		}
	}
}
