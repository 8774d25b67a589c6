package tests

import (
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// procIDs returns the real and effective uid and gid of a process.
func procIDs(t *testing.T, pid int) (ruid, euid, rgid, egid string) {
	t.Helper()
	u := strings.Fields(statusField(t, pid, "Uid"))
	g := strings.Fields(statusField(t, pid, "Gid"))
	return u[0], u[1], g[0], g[1]
}

// TestAChildsUIDCannotWriteAnythingInStateDir plays a compromised child:
// with a live child's own credentials it tries to create a file in every
// directory of state_dir and to open every file there for writing (the
// module store, the compilation cache whose native code other children
// run, the CPU ledger, the bad-module marks). Every attempt must fail.
// A cache entry the child cannot read (it was removed) is compiled by the
// child for itself instead of failing the request.
func TestAChildsUIDCannotWriteAnythingInStateDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test checks the uids of a manager started as root: run the suite as root (as CI does)")
	}
	setpriv := requireTool(t, "setpriv", "util-linux")
	dir := t.TempDir()
	makeReachable(t, dir)
	bin := buildBinary(t, dir)
	w := startWagi(t, bin, dir, sandboxConfig)
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)
	if r := c.get("/hello"); r.status != 200 {
		t.Fatalf("/hello: %d %q", r.status, r.body)
	}
	pids := w.waitChildren(t, 2, 10*time.Second)
	state := filepath.Join(dir, "state")

	var dirs, files []string
	_ = filepath.WalkDir(state, func(p string, de fs.DirEntry, err error) error {
		switch {
		case err != nil:
		case de.IsDir():
			dirs = append(dirs, p)
		case de.Type().IsRegular():
			files = append(files, p)
		}
		return nil
	})
	cache := filepath.Join(state, "compilation-cache")
	var cacheFiles []string
	for _, f := range files {
		if strings.HasPrefix(f, cache+string(filepath.Separator)) {
			cacheFiles = append(cacheFiles, f)
		}
	}
	if len(cacheFiles) == 0 || len(dirs) < 3 {
		t.Fatalf("state_dir holds %d directories and no compilation cache entry: nothing to attack", len(dirs))
	}
	// The probe: for each directory, create a file; for each file, open it
	// for appending (which changes nothing if it succeeds). Any success
	// is printed.
	var script strings.Builder
	for _, d := range dirs {
		fmt.Fprintf(&script, "( : > %q/.probe ) 2>/dev/null && echo created in %q\n", d, d)
	}
	for _, f := range files {
		fmt.Fprintf(&script, "( : >> %q ) 2>/dev/null && echo opened for writing %q\n", f, f)
	}
	script.WriteString("true\n") // failures are the expected outcome
	for _, pid := range pids {
		ruid, euid, rgid, egid := procIDs(t, pid)
		cmd := exec.Command(setpriv, "--ruid", ruid, "--euid", euid, "--rgid", rgid, "--egid", egid, "--clear-groups",
			"sh", "-c", script.String())
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("probe as child %d (uid %s/%s): %v\n%s", pid, ruid, euid, err, out)
		}
		if len(out) > 0 {
			t.Errorf("as child %d's uids (real %s, effective %s), state_dir is writable:\n%s", pid, ruid, euid, out)
		}
	}
	// Whoever wrote the cache is not a child's effective user.
	for _, f := range cacheFiles {
		st, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		owner := fmt.Sprint(st.Sys().(*syscall.Stat_t).Uid)
		for _, pid := range pids {
			if _, euid, _, _ := procIDs(t, pid); owner == euid {
				t.Fatalf("cache file %s belongs to the children's user %s", f, euid)
			}
		}
	}

	t.Run("a child that misses the read-only cache compiles for itself", func(t *testing.T) {
		for _, f := range cacheFiles {
			if err := os.Remove(f); err != nil {
				t.Fatal(err)
			}
		}
		// Fresh children load the modules again, from a cache that no
		// longer has them and that they may not write.
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		// Wait for two children that are all new: a request sent to one
		// that is dying but not yet reaped would get a 502.
		deadline := time.Now().Add(20 * time.Second)
		for {
			now := w.children(t)
			fresh := len(now) == 2
			for _, p := range now {
				fresh = fresh && p != pids[0] && p != pids[1]
			}
			if fresh {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("children %v, want two that replace %v", now, pids)
			}
			time.Sleep(10 * time.Millisecond)
		}
		time.Sleep(200 * time.Millisecond) // let them finish their preload
		for i := 0; i < 3; i++ {
			if r := c.get("/hello"); r.status != 200 {
				t.Fatalf("/hello after the cache lost its entries: %d %q", r.status, r.body)
			}
		}
		w.log.waitFor(t, 10*time.Second, "compilation cache miss; compiling without it")
	})
}
