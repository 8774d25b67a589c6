package tests

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"os/user"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// sandboxConfig leaves [pool] user and uid_range at their defaults: a
// manager started as root must confine its children by itself.
const sandboxConfig = `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 2

[limits]
timeout = "30s"

[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"

[[module]]
route = "/sleep"
module = "{{mods}}/sleep.wasm"
`

// statusField returns the value of one field of /proc/PID/status.
func statusField(t *testing.T, pid int, field string) string {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + field + `:\s*(.*)$`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("/proc/%d/status has no %s", pid, field)
	}
	return strings.TrimSpace(string(m[1]))
}

// TestChildrenOfARootManagerAreConfinedByDefault is the attacker's view of
// a child process with the default config, the manager started as root (as
// the suite is in CI): a child that runs guest code must hold no uid 0, no
// capability, no way to gain one, and a syscall filter; and no child may
// signal another.
func TestChildrenOfARootManagerAreConfinedByDefault(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test checks what a manager started as root does to its children: run the suite as root (as CI does)")
	}
	shared, err := user.Lookup("wagi-fcgi")
	if err != nil {
		t.Fatalf("the default child user: %v (tests/setup.sh creates it)", err)
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

	t.Run("every child runs with its own uid, no capability, no_new_privs and a seccomp filter", func(t *testing.T) {
		owns := map[string]bool{}
		for _, pid := range pids {
			uids := strings.Fields(statusField(t, pid, "Uid"))
			if len(uids) != 4 {
				t.Fatalf("child %d: Uid %q", pid, uids)
			}
			for _, u := range uids {
				if u == "0" {
					t.Errorf("child %d runs with uid 0: Uid %q", pid, uids)
				}
			}
			// real and saved: the child's own; effective and fs: the
			// shared user, who owns what children read and write.
			if uids[0] != uids[2] || uids[1] != shared.Uid || uids[3] != shared.Uid || uids[0] == shared.Uid {
				t.Errorf("child %d: Uid %q, want own/%s/own/%s", pid, uids, shared.Uid, shared.Uid)
			}
			owns[uids[0]] = true
			if g := strings.Fields(statusField(t, pid, "Gid")); g[0] == "0" || g[1] == "0" {
				t.Errorf("child %d runs in group root: Gid %q", pid, g)
			}
			// Every thread, not only the main one: capability sets and
			// seccomp are per thread.
			tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
			if err != nil {
				t.Fatal(err)
			}
			for _, task := range tasks {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, task.Name()))
				if err != nil {
					continue // the thread ended
				}
				for _, want := range []string{"CapInh:\t0000000000000000", "CapPrm:\t0000000000000000", "CapEff:\t0000000000000000",
					"CapBnd:\t0000000000000000", "CapAmb:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2"} {
					if !strings.Contains(string(b), want) {
						t.Errorf("child %d thread %s: no %q in its status", pid, task.Name(), want)
					}
				}
			}
		}
		if len(owns) != len(pids) {
			t.Errorf("children share real uids: %v for %d children", owns, len(pids))
		}
	})

	t.Run("a child's uid cannot signal another child", func(t *testing.T) {
		a, b := pids[0], pids[1]
		uidA := strings.Fields(statusField(t, a, "Uid"))[0]
		gidA := strings.Fields(statusField(t, a, "Gid"))[0]
		as := func(uid string, target int) (string, error) {
			out, err := exec.Command(setpriv, "--reuid="+uid, "--regid="+gidA, "--clear-groups",
				"kill", "-0", strconv.Itoa(target)).CombinedOutput()
			return string(out), err
		}
		// Sanity: the helper can signal what it may (its own uid's child).
		if out, err := as(uidA, a); err != nil {
			t.Fatalf("child A's uid cannot signal child A itself: %v %s", err, out)
		}
		if out, err := as(uidA, b); err == nil || !strings.Contains(out, "not permitted") {
			t.Errorf("child A's uid %s signals child B (%d): err %v, %q; want EPERM", uidA, b, err, out)
		}
		// Nor can the shared effective uid, which every child has.
		if out, err := as(shared.Uid, b); err == nil || !strings.Contains(out, "not permitted") {
			t.Errorf("the shared uid %s signals child B (%d): err %v, %q; want EPERM", shared.Uid, b, err, out)
		}
	})

	t.Run("a child killed by SIGSYS mid-request is answered with a 5xx and a request id", func(t *testing.T) {
		// A forbidden system call kills the child with SIGSYS (the
		// filter's own test, internal/sandbox, shows that part): here
		// the manager must answer for the child, like for any death.
		var r response
		var wg sync.WaitGroup
		wg.Add(1)
		go func() { defer wg.Done(); r = c.get("/sleep?20000") }()
		// Wait until a child runs it.
		for deadline := time.Now().Add(10 * time.Second); readStatus(t, c).Pool.Idle == 2; time.Sleep(20 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("no child took the request within 10s")
			}
		}
		killed := w.children(t)
		for _, pid := range killed {
			_ = syscall.Kill(pid, syscall.SIGSYS)
		}
		wg.Wait()
		if r.status != 502 || !strings.Contains(string(r.body), "request id: ") {
			t.Fatalf("a child killed by SIGSYS: %d %q, want 502 with a request id", r.status, r.body)
		}
		w.log.waitFor(t, 10*time.Second, "bad system call")
		// Both children were killed: wait until neither is left (a
		// request sent to one dying but not yet reaped would get a 502).
		for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			now := w.children(t)
			fresh := len(now) == 2
			for _, p := range now {
				fresh = fresh && !slices.Contains(killed, p)
			}
			if fresh {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("children %v, want two that replace %v", now, killed)
			}
		}
		time.Sleep(200 * time.Millisecond) // their preload
		if r := c.get("/hello"); r.status != 200 {
			t.Fatalf("after the replacement: %d %q", r.status, r.body)
		}
	})
}

// TestARootManagerRefusesChildUsersThatWouldNotConfineThem: a pool.user
// that is missing or root, or a uid_range that holds an account or too few
// uids, makes the manager fail and name the problem, never fall back to
// running children as root or with shared uids.
func TestARootManagerRefusesChildUsersThatWouldNotConfineThem(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("this test checks what a manager started as root does: run the suite as root (as CI does)")
	}
	dir := t.TempDir()
	makeReachable(t, dir)
	bin := buildBinary(t, dir)
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	nobodyUID, _ := strconv.Atoi(nobody.Uid)
	base := "listen = \"unix:{{dir}}/wagi.sock\"\nstate_dir = \"{{dir}}/state\"\n[[module]]\nroute = \"/hello\"\nmodule = \"{{mods}}/hello.wasm\"\n[pool]\nchildren = 2\n"
	// The default user's absence is simulated in a mount namespace whose
	// /etc/passwd lacks it (the machine's own must keep it).
	unshare := requireTool(t, "unshare", "util-linux")
	passwd, err := os.ReadFile("/etc/passwd")
	if err != nil {
		t.Fatal(err)
	}
	var kept []string
	for _, line := range strings.SplitAfter(string(passwd), "\n") {
		if !strings.HasPrefix(line, "wagi-fcgi:") {
			kept = append(kept, line)
		}
	}
	noDefault := dir + "/passwd-without-wagi-fcgi"
	if err := os.WriteFile(noDefault, []byte(strings.Join(kept, "")), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, pool, want string
		noDefaultUser    bool
	}{
		{"the default user missing", "", "useradd --system", true},
		{"a missing user", "user = \"wagi-no-such-user\"\n", `pool.user "wagi-no-such-user"`, false},
		{"root", "user = \"root\"\n", "children never run as root", false},
		{"a uid range holding an account", fmt.Sprintf("uid_range = \"%d-%s\"\n", nobodyUID-2, nobody.Uid), "belongs to \"nobody\"", false},
		{"a uid range smaller than the pool", "uid_range = \"70000-70000\"\n", "fewer than the 2 children", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := strings.NewReplacer("{{dir}}", dir).Replace(base + tc.pool)
			cfg = expand(t, cfg, dir)
			path := dir + "/" + strings.ReplaceAll(tc.name, " ", "-") + ".toml"
			if err := os.WriteFile(path, []byte(cfg), 0o644); err != nil {
				t.Fatal(err)
			}
			// A manager that accepts the config serves until killed.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "serve", "-c", path)
			if tc.noDefaultUser {
				cmd = exec.CommandContext(ctx, unshare, "--mount", "sh", "-c",
					`mount --bind "$1" /etc/passwd && exec "$2" serve -c "$3"`, "sh", noDefault, bin, path)
			}
			out, err := cmd.CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("serve started with children it cannot confine; output %q", out)
			}
			if err == nil || !strings.Contains(string(out), tc.want) {
				t.Fatalf("serve: %v, output %q; want a failure naming %q", err, out, tc.want)
			}
		})
	}
}
