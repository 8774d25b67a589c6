package tests

import (
	"bufio"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/yookoala/gofast"
	"golang.org/x/sys/unix"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// The systemd tests need, from Debian packages: systemd
// (systemd-socket-activate, systemd-analyze, systemd-sysusers) and
// util-linux (setpriv, prlimit; essential, always installed).

// unitFile is a parsed systemd unit: section -> key -> values in order.
type unitFile map[string]map[string][]string

// parseUnit reads a unit file the way systemd does for the keys we check:
// comments (# ;), backslash continuations, repeated keys appended, an empty
// assignment resetting the list.
func parseUnit(t testing.TB, path string) unitFile {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	u := unitFile{}
	section := ""
	sc := bufio.NewScanner(strings.NewReader(string(b)))
	var cont string
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if cont == "" && (line == "" || line[0] == '#' || line[0] == ';') {
			continue
		}
		if strings.HasSuffix(line, "\\") {
			cont += strings.TrimSuffix(line, "\\") + " "
			continue
		}
		line, cont = cont+line, ""
		if strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]") {
			section = line[1 : len(line)-1]
			if u[section] == nil {
				u[section] = map[string][]string{}
			}
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok || section == "" {
			t.Fatalf("%s:%d: not a key=value line in a section: %q", path, n, line)
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if v == "" {
			u[section][k] = nil
			continue
		}
		u[section][k] = append(u[section][k], v)
	}
	return u
}

// get returns the last value of section.key ("" if unset).
func (u unitFile) get(section, key string) string {
	vs := u[section][key]
	if len(vs) == 0 {
		return ""
	}
	return vs[len(vs)-1]
}

// words returns every space-separated word of every value of section.key.
func (u unitFile) words(section, key string) []string {
	var ws []string
	for _, v := range u[section][key] {
		ws = append(ws, strings.Fields(v)...)
	}
	return ws
}

func systemdUnits(t testing.TB) (service, socket unitFile, dir string) {
	t.Helper()
	dir = filepath.Join(testenv.RepoRoot(t), "conf", "systemd")
	return parseUnit(t, filepath.Join(dir, "wagi-fcgi.service")), parseUnit(t, filepath.Join(dir, "wagi-fcgi.socket")), dir
}

// requireTool finds a tool the tests need, failing (never skipping) when it is
// missing.
func requireTool(t testing.TB, name, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s is not installed (Debian package %s; run tests/setup.sh): %v", name, pkg, err)
	}
	return p
}

// fastcgiGet sends GET target over FastCGI to the unix socket sock.
func fastcgiGet(t testing.TB, sock, target string) *httptest.ResponseRecorder {
	t.Helper()
	cf := gofast.SimpleClientFactory(gofast.SimpleConnFactory("unix", sock))
	h := gofast.NewHandler(gofast.Chain(gofast.BasicParamsMap, gofast.MapHeader)(gofast.BasicSession), cf)
	rec := httptest.NewRecorder()
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.ServeHTTP(rec, httptest.NewRequest("GET", target, nil))
	}()
	select {
	case <-done:
	case <-time.After(15 * time.Second):
		t.Fatalf("GET %s over %s: no answer within 15s", target, sock)
	}
	return rec
}

// startWrapped runs argv (a wrapper that ends by exec'ing `wagi-fcgi
// serve`, so its pid becomes the manager's) until the test ends.
func startWrapped(t testing.TB, argv []string) *wagiProc {
	t.Helper()
	w := &wagiProc{log: &logBuffer{}, done: make(chan struct{})}
	w.cmd = exec.Command(argv[0], argv[1:]...)
	w.cmd.Stdout, w.cmd.Stderr = w.log, w.log
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = w.cmd.Wait(); close(w.done) }()
	t.Cleanup(func() { w.stop(t) })
	return w
}

func writeWagiConfig(t testing.TB, dir, config string) string {
	t.Helper()
	p := filepath.Join(dir, "wagi.toml")
	if err := os.WriteFile(p, []byte(expand(t, config, dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func waitAccepting(t testing.TB, w *wagiProc, sock string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if st, err := os.Stat(sock); err == nil && st.Mode()&os.ModeSocket != 0 {
			if c, err := net.Dial("unix", sock); err == nil {
				c.Close()
				return
			}
		}
		select {
		case <-w.done:
			t.Fatalf("exited during start: %v\n%s", w.cmd.ProcessState, w.log)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not accept within 20s; log:\n%s", sock, w.log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

const activationConfig = `
listen = "unix:{{dir}}/own.sock"
state_dir = "{{dir}}/state"
[pool]
children = 1
[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"
`

// TestSystemdSocketActivation starts the real binary the way
// wagi-fcgi.socket does (systemd-socket-activate passes the socket as fd 3
// with LISTEN_FDS/LISTEN_PID) and reloads it the way the unit's ExecReload
// does.
func TestSystemdSocketActivation(t *testing.T) {
	activate := requireTool(t, "systemd-socket-activate", "systemd")
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	cfg := writeWagiConfig(t, dir, activationConfig)
	act := filepath.Join(dir, "act.sock")
	own := filepath.Join(dir, "own.sock")
	w := startWrapped(t, []string{activate, "-l", act, bin, "serve", "-c", cfg})
	// systemd-socket-activate execs the command on the first connection,
	// which then waits in the backlog while the manager starts, as with
	// systemd.
	w.log.waitFor(t, 10*time.Second, "Listening on "+act)
	rec := fastcgiGet(t, act, "/hello")
	if rec.Code != 200 || rec.Body.String() != "Hello, world!\n" {
		t.Fatalf("GET /hello over the activated socket: %d %q\nlog:\n%s", rec.Code, rec.Body, w.log)
	}
	pid := w.cmd.Process.Pid
	w.log.waitFor(t, 5*time.Second, "listening", "fastcgi=unix:"+act)

	t.Run("the config's own socket is not created", func(t *testing.T) {
		if _, err := os.Lstat(own); !os.IsNotExist(err) {
			t.Errorf("%s: %v, want it absent under socket activation", own, err)
		}
	})

	t.Run("children get neither the socket nor LISTEN_*", func(t *testing.T) {
		// The activated socket's inode: the listening entry for act in
		// /proc/net/unix (flag __SO_ACCEPTCON).
		target := ""
		tab, err := os.ReadFile("/proc/net/unix")
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(string(tab), "\n") {
			f := strings.Fields(line)
			if len(f) == 8 && f[7] == act && f[3] == "00010000" {
				target = "socket:[" + f[6] + "]"
			}
		}
		if target == "" {
			t.Fatalf("no listening socket %s in /proc/net/unix", act)
		}
		held := false
		fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
		for _, fd := range fds {
			if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name())); l == target {
				held = true
			}
		}
		if !held {
			t.Fatalf("the manager does not hold %s (%s)", act, target)
		}
		children := w.waitChildren(t, 1, 5*time.Second)
		for _, c := range children {
			fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", c))
			for _, fd := range fds {
				if l, _ := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", c, fd.Name())); l == target {
					t.Errorf("child %d has the listening socket on fd %s", c, fd.Name())
				}
			}
			env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", c))
			if strings.Contains(string(env), "LISTEN_") {
				t.Errorf("child %d environment: %q", c, env)
			}
		}
	})

	t.Run("ExecReload checks, then SIGHUP reloads on the same socket", func(t *testing.T) {
		service, _, _ := systemdUnits(t)
		unitBin, unitCfg := unitExecStart(t, service)
		// The unit's ExecReload lines, run like systemd: in order, stopping
		// at the first that fails.
		execReload := func() error {
			for _, line := range service["Service"]["ExecReload"] {
				line = strings.ReplaceAll(line, unitBin, bin)
				line = strings.ReplaceAll(line, unitCfg, cfg)
				line = strings.ReplaceAll(line, "$MAINPID", strconv.Itoa(pid))
				argv := strings.Fields(line)
				if out, err := exec.Command(argv[0], argv[1:]...).CombinedOutput(); err != nil {
					return fmt.Errorf("%s: %v\n%s", line, err, out)
				}
			}
			return nil
		}
		// A broken config: check fails, no SIGHUP, the old config serves on.
		writeWagiConfig(t, dir, activationConfig+"\n[[module]]\nroute = \"/broken\"\nmodule = \"{{mods}}/badimport.wasm\"\n")
		if err := execReload(); err == nil {
			t.Fatal("ExecReload succeeded on a config with a module that cannot run")
		}
		if rec := fastcgiGet(t, act, "/broken"); rec.Code != 404 {
			t.Errorf("GET /broken after a failed reload: %d, want 404", rec.Code)
		}
		// A good config with a new route: it appears, same process, same socket.
		writeWagiConfig(t, dir, activationConfig+"\n[[module]]\nroute = \"/new\"\nmodule = \"{{mods}}/hello.wasm\"\n")
		if err := execReload(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for {
			rec := fastcgiGet(t, act, "/new")
			if rec.Code == 200 {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("GET /new after reload: %d %q\nlog:\n%s", rec.Code, rec.Body, w.log)
			}
			time.Sleep(50 * time.Millisecond)
		}
		select {
		case <-w.done:
			t.Fatalf("the manager exited on reload: %v\n%s", w.cmd.ProcessState, w.log)
		default:
		}
		if rec := fastcgiGet(t, act, "/hello"); rec.Code != 200 {
			t.Errorf("GET /hello after reload: %d", rec.Code)
		}
		if _, err := os.Lstat(own); !os.IsNotExist(err) {
			t.Errorf("%s appeared on reload: %v", own, err)
		}
	})

	t.Run("SIGTERM exits cleanly", func(t *testing.T) {
		w.stop(t)
		if code := w.cmd.ProcessState.ExitCode(); code != 0 {
			t.Errorf("exit code %d after SIGTERM; log:\n%s", code, w.log)
		}
	})
}

// TestListenOwnerGroupModeApplyToTheSocket checks listen_owner,
// listen_group and listen_mode on a socket the manager creates itself (no
// socket activation).
func TestListenOwnerGroupModeApplyToTheSocket(t *testing.T) {
	group := "www-data" // from base-passwd, as nginx and Apache use it
	g, err := user.LookupGroup(group)
	if err != nil {
		group = "nogroup"
		if g, err = user.LookupGroup(group); err != nil {
			t.Fatal(err)
		}
	}
	nobody, err := user.Lookup("nobody")
	if err != nil {
		t.Fatal(err)
	}
	gid, _ := strconv.Atoi(g.Gid)
	uid, _ := strconv.Atoi(nobody.Uid)
	bin := buildBinary(t, t.TempDir())
	for _, tc := range []struct {
		name     string
		settings string
		mode     os.FileMode
		uid, gid int
	}{
		{"defaults", ``, 0o660, os.Geteuid(), os.Getegid()},
		{"names", fmt.Sprintf("listen_mode = \"0640\"\nlisten_owner = \"nobody\"\nlisten_group = %q\n", group), 0o640, uid, gid},
		{"numeric ids", fmt.Sprintf("listen_mode = \"0600\"\nlisten_owner = \"%d\"\nlisten_group = \"%d\"\n", uid, gid), 0o600, uid, gid},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			w := startWagi(t, bin, dir, "listen = \"unix:{{dir}}/wagi.sock\"\nstate_dir = \"{{dir}}/state\"\n"+tc.settings+
				"[pool]\nchildren = 1\n[[module]]\nroute = \"/hello\"\nmodule = \"{{mods}}/hello.wasm\"\n")
			st, err := os.Stat(w.sock)
			if err != nil {
				t.Fatal(err)
			}
			sys := st.Sys().(*syscall.Stat_t)
			if st.Mode()&os.ModeSocket == 0 || st.Mode().Perm() != tc.mode || int(sys.Uid) != tc.uid || int(sys.Gid) != tc.gid {
				t.Errorf("socket %v uid %d gid %d, want socket %v uid %d gid %d", st.Mode(), sys.Uid, sys.Gid, tc.mode, tc.uid, tc.gid)
			}
			if rec := fastcgiGet(t, w.sock, "/hello"); rec.Code != 200 {
				t.Errorf("GET /hello: %d %q", rec.Code, rec.Body)
			}
			// The manager removes its socket when it exits.
			w.stop(t)
			if _, err := os.Lstat(w.sock); !os.IsNotExist(err) {
				t.Errorf("socket left behind after SIGTERM: %v", err)
			}
		})
	}
}

// unitExecStart returns the binary and config path of the unit's
// ExecStart, which must be `BIN serve -c CONFIG`.
func unitExecStart(t testing.TB, service unitFile) (bin, cfg string) {
	t.Helper()
	f := strings.Fields(service.get("Service", "ExecStart"))
	if len(service["Service"]["ExecStart"]) != 1 || len(f) != 4 || f[1] != "serve" || f[2] != "-c" {
		t.Fatalf("ExecStart = %q, want one `BIN serve -c CONFIG`", service["Service"]["ExecStart"])
	}
	return f[0], f[3]
}

// TestSystemdUnitsAreConsistent checks the shipped units against the
// binary, the config defaults and the nginx/Apache configs, and lets
// systemd-analyze verify them.
func TestSystemdUnitsAreConsistent(t *testing.T) {
	service, socket, unitDir := systemdUnits(t)
	root := testenv.RepoRoot(t)
	def := config.Default()
	bin, cfg := unitExecStart(t, service)
	if bin != "/usr/local/bin/wagi-fcgi" || cfg != "/etc/wagi-fcgi/wagi.toml" {
		t.Errorf("ExecStart runs %s with %s", bin, cfg)
	}
	want := func(u unitFile, section, key, value string) {
		t.Helper()
		if got := u.get(section, key); got != value {
			t.Errorf("[%s] %s = %q, want %q", section, key, got, value)
		}
	}

	t.Run("service", func(t *testing.T) {
		if got, w := service["Service"]["ExecReload"], []string{bin + " check -c " + cfg, "/bin/kill -HUP $MAINPID"}; !slices.Equal(got, w) {
			t.Errorf("ExecReload = %q, want %q", got, w)
		}
		want(service, "Service", "Type", "simple")
		want(service, "Service", "KillSignal", "SIGTERM")
		want(service, "Service", "KillMode", "mixed") // children must not get SIGTERM while draining
		want(service, "Service", "Restart", "on-failure")
		want(service, "Service", "OOMPolicy", "continue")
		want(service, "Service", "NoNewPrivileges", "yes")
		want(service, "Service", "ProtectSystem", "strict")
		want(service, "Service", "LimitCORE", "0")
		if d := "/var/lib/" + service.get("Service", "StateDirectory"); d != def.StateDir {
			t.Errorf("StateDirectory gives %s, the default state_dir is %s", d, def.StateDir)
		}
		for _, k := range []string{"Requires", "After"} {
			if !slices.Contains(service.words("Unit", k), "wagi-fcgi.socket") {
				t.Errorf("[Unit] %s does not name wagi-fcgi.socket", k)
			}
		}
		// Above the drain grace of cmd/wagi-fcgi.
		src, err := os.ReadFile(filepath.Join(root, "cmd", "wagi-fcgi", "commands.go"))
		if err != nil {
			t.Fatal(err)
		}
		m := regexp.MustCompile(`shutdownGrace = (\d+) \* time\.Second`).FindSubmatch(src)
		if m == nil {
			t.Fatal("no `shutdownGrace = N * time.Second` in cmd/wagi-fcgi/commands.go")
		}
		grace, _ := strconv.Atoi(string(m[1]))
		stop, err := time.ParseDuration(service.get("Service", "TimeoutStopSec"))
		if err != nil || stop <= time.Duration(grace)*time.Second {
			t.Errorf("TimeoutStopSec = %q (%v), want above the %ds drain grace", service.get("Service", "TimeoutStopSec"), err, grace)
		}
		if fams := service.words("Service", "RestrictAddressFamilies"); !slices.Contains(fams, "AF_UNIX") ||
			!slices.Contains(fams, "AF_INET") || !slices.Contains(fams, "AF_INET6") {
			t.Errorf("RestrictAddressFamilies = %q: unix socket, kubo API and tcp listen need AF_UNIX AF_INET AF_INET6", fams)
		}
		// Settings that would break the manager.
		for k, bad := range map[string]string{
			"MemoryDenyWriteExecute": "yes",       // wazero's compiled code
			"ProtectProc":            "invisible", // /proc of children as pool.user
			"PrivateUsers":           "yes",       // setuid to pool.user
			"DynamicUser":            "yes",
			"PrivateNetwork":         "yes", // kubo API
		} {
			if service.get("Service", k) == bad {
				t.Errorf("%s=%s breaks the manager", k, bad)
			}
		}
		if u := service.get("Service", "User"); u != "" && u != "root" {
			t.Errorf("User=%s: the manager must be root to drop children to pool.user", u)
		}
	})

	t.Run("socket", func(t *testing.T) {
		path := socket.get("Socket", "ListenStream")
		if def.Listen.Network != "unix" || path != def.Listen.Address {
			t.Errorf("ListenStream = %q, the default listen is %s:%s", path, def.Listen.Network, def.Listen.Address)
		}
		for f, ref := range map[string]string{
			"conf/nginx/wagi-fcgi.conf":  "unix:" + path + ";",
			"conf/apache/wagi-fcgi.conf": `"unix:` + path + `|`,
		} {
			b, err := os.ReadFile(filepath.Join(root, f))
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(string(b), ref) {
				t.Errorf("%s does not connect to %s (no %q)", f, path, ref)
			}
		}
		want(socket, "Socket", "SocketMode", fmt.Sprintf("%04o", def.ListenMode))
		want(socket, "Socket", "SocketUser", "root")
		want(socket, "Socket", "SocketGroup", "www-data")
		want(socket, "Socket", "Accept", "no")
	})

	t.Run("systemd-analyze verify", func(t *testing.T) {
		analyze := requireTool(t, "systemd-analyze", "systemd")
		dir := t.TempDir()
		// verify wants ExecStart's binary to be executable: any will do.
		wagi, err := os.Executable()
		if err != nil {
			t.Fatal(err)
		}
		units := filepath.Join(dir, "units")
		if err := os.Mkdir(units, 0o755); err != nil {
			t.Fatal(err)
		}
		for _, name := range []string{"wagi-fcgi.service", "wagi-fcgi.socket"} {
			b, err := os.ReadFile(filepath.Join(unitDir, name))
			if err != nil {
				t.Fatal(err)
			}
			s := strings.ReplaceAll(string(b), bin, wagi)
			if err := os.WriteFile(filepath.Join(units, name), []byte(s), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		verify := func(files ...string) (string, error) {
			cmd := exec.Command(analyze, append([]string{"verify", "--man=no"}, files...)...)
			out, err := cmd.CombinedOutput()
			return string(out), err
		}
		out, err := verify(filepath.Join(units, "wagi-fcgi.socket"), filepath.Join(units, "wagi-fcgi.service"))
		if err != nil || strings.TrimSpace(out) != "" {
			t.Errorf("systemd-analyze verify: %v\n%s", err, out)
		}
		// verify works here: it reports what it should.
		bad := filepath.Join(units, "bad.service")
		if err := os.WriteFile(bad, []byte("[Service]\nExecStart="+wagi+" version\nNoSuchKey=1\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, _ := verify(bad); !strings.Contains(out, "NoSuchKey") {
			t.Errorf("systemd-analyze verify does not report an unknown key: %q", out)
		}
	})

	t.Run("sysusers snippet", func(t *testing.T) {
		sysusers := requireTool(t, "systemd-sysusers", "systemd")
		dir := t.TempDir()
		if err := os.Mkdir(filepath.Join(dir, "etc"), 0o755); err != nil {
			t.Fatal(err)
		}
		out, err := exec.Command(sysusers, "--root="+dir, filepath.Join(unitDir, "wagi-fcgi.sysusers")).CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-sysusers: %v\n%s", err, out)
		}
		passwd, _ := os.ReadFile(filepath.Join(dir, "etc", "passwd"))
		if !regexp.MustCompile(`(?m)^wagi-fcgi:x:\d+:\d+:[^:]*:[^:]*:/usr/sbin/nologin$`).Match(passwd) {
			t.Errorf("no wagi-fcgi system user without login:\n%s\n%s", passwd, out)
		}
	})
}

const hardeningConfig = `
listen = "unix:{{dir}}/wagi.sock"
listen_owner = "nobody"
listen_group = "nogroup"
state_dir = "{{dir}}/state"
[pool]
children = 1
user = "nobody"
[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"
[[module]]
route = "/loop"
module = "{{mods}}/loop.wasm"
cpu = "200ms"
timeout = "5s"
`

// TestSystemdHardeningKeepsTheManagerWorking runs the manager with the
// unit's capability bounding set, NoNewPrivileges and resource limits
// (applied with util-linux's setpriv and prlimit, as systemd would) and
// children as nobody: it must still drop children to pool.user, share the
// compilation cache with them, and SIGKILL one that runs past its limit.
func TestSystemdHardeningKeepsTheManagerWorking(t *testing.T) {
	setpriv := requireTool(t, "setpriv", "util-linux")
	prlimit := requireTool(t, "prlimit", "util-linux")
	service, _, _ := systemdUnits(t)
	capNums := map[string]int{
		"CAP_CHOWN": unix.CAP_CHOWN, "CAP_DAC_OVERRIDE": unix.CAP_DAC_OVERRIDE,
		"CAP_DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH, "CAP_FOWNER": unix.CAP_FOWNER,
		"CAP_KILL": unix.CAP_KILL, "CAP_SETUID": unix.CAP_SETUID, "CAP_SETGID": unix.CAP_SETGID,
		"CAP_NET_BIND_SERVICE": unix.CAP_NET_BIND_SERVICE, "CAP_SYS_PTRACE": unix.CAP_SYS_PTRACE,
		"CAP_SYS_RESOURCE": unix.CAP_SYS_RESOURCE, "CAP_SETPCAP": unix.CAP_SETPCAP,
		"CAP_SYS_NICE": unix.CAP_SYS_NICE,
	}
	caps := service.words("Service", "CapabilityBoundingSet")
	if len(caps) == 0 || strings.HasPrefix(caps[0], "~") {
		t.Fatalf("CapabilityBoundingSet = %q, want an allow list", caps)
	}
	bounding := "-all"
	var mask uint64
	for _, c := range caps {
		n, ok := capNums[c]
		if !ok {
			t.Fatalf("CapabilityBoundingSet: %s is not known to this test; add it to capNums", c)
		}
		mask |= 1 << n
		bounding += ",+" + strings.ToLower(strings.TrimPrefix(c, "CAP_"))
	}

	dir := t.TempDir()
	bin := buildBinary(t, dir)
	// nobody's children must reach the state directory.
	for d := dir; d != "/" && d != os.TempDir(); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	cfg := writeWagiConfig(t, dir, hardeningConfig)
	// LimitNOFILE is left out: raising the hard limit needs more than this
	// test environment may allow, and it restricts nothing.
	wrap := []string{prlimit, "--core=" + service.get("Service", "LimitCORE"),
		setpriv, "--bounding-set=" + bounding}
	if service.get("Service", "NoNewPrivileges") == "yes" {
		wrap = append(wrap, "--no-new-privs")
	}
	wrap = append(wrap, "--")
	w := startWrapped(t, append(slices.Clone(wrap), bin, "serve", "-c", cfg))
	// Runs before startWrapped's cleanup: should the manager lack the
	// right to kill its children, they would outlive it (the kernel's
	// parent-death signal needs that right too); kill them here.
	t.Cleanup(func() {
		var pids []int
		select {
		case <-w.done:
		default:
			pids = w.children(t)
		}
		w.stop(t)
		for _, p := range pids {
			_ = syscall.Kill(p, syscall.SIGKILL)
		}
	})
	sock := filepath.Join(dir, "wagi.sock")
	waitAccepting(t, w, sock)

	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", w.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{fmt.Sprintf("CapBnd:\t%016x\n", mask), fmt.Sprintf("CapEff:\t%016x\n", mask), "NoNewPrivs:\t1\n"} {
		if !strings.Contains(string(status), s) {
			t.Fatalf("the manager runs without the unit's restrictions (no %q):\n%s", s, status)
		}
	}

	if rec := fastcgiGet(t, sock, "/hello"); rec.Code != 200 || rec.Body.String() != "Hello, world!\n" {
		t.Fatalf("GET /hello: %d %q\nlog:\n%s", rec.Code, rec.Body, w.log)
	}
	before := w.waitChildren(t, 1, 5*time.Second)
	child, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", before[0]))
	nobody, _ := user.Lookup("nobody")
	// Effective uid pool.user's; the real one is the slot's own.
	if !regexp.MustCompile(`\nUid:\t[1-9][0-9]*\t` + nobody.Uid + `\t`).Match(child) {
		t.Errorf("child %d does not run as %s: %s", before[0], nobody.Uid, child)
	}
	for _, s := range []string{"CapEff:\t0000000000000000\n", "CapBnd:\t0000000000000000\n"} {
		if !strings.Contains(string(child), s) {
			t.Errorf("child %d: no %q in its status", before[0], s)
		}
	}
	// A runaway child must be killed (CAP_KILL: it runs as another user)
	// and replaced.
	if rec := fastcgiGet(t, sock, "/loop"); rec.Code != http.StatusGatewayTimeout {
		t.Errorf("GET /loop: %d %q, want 504", rec.Code, rec.Body)
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		after := w.children(t)
		if len(after) == 1 && after[0] != before[0] {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("children %v, want the looping child %d killed and replaced\nlog:\n%s", after, before[0], w.log)
		}
		time.Sleep(10 * time.Millisecond)
	}
	if rec := fastcgiGet(t, sock, "/hello"); rec.Code != 200 {
		t.Errorf("GET /hello after the kill: %d %q", rec.Code, rec.Body)
	}
	// A module compiled after the cache was handed to pool.user (on
	// reload): the manager writes into a directory it no longer owns.
	if err := os.WriteFile(cfg, []byte(expand(t, hardeningConfig+"[[module]]\nroute = \"/new\"\nmodule = \"{{mods}}/echo.wasm\"\n", dir)), 0o644); err != nil {
		t.Fatal(err)
	}
	// The unit's ExecReload, in the same sandbox: `check` (which compiles
	// the new module as root into the shared cache), then SIGHUP.
	unitBin, unitCfg := unitExecStart(t, service)
	for _, line := range service["Service"]["ExecReload"] {
		line = strings.ReplaceAll(line, unitBin, bin)
		line = strings.ReplaceAll(line, unitCfg, cfg)
		line = strings.ReplaceAll(line, "$MAINPID", strconv.Itoa(w.cmd.Process.Pid))
		cmd := exec.Command(wrap[0], append(wrap[1:], strings.Fields(line)...)...)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("ExecReload %s: %v\n%s", line, err, out)
		}
	}
	deadline = time.Now().Add(10 * time.Second)
	for {
		rec := fastcgiGet(t, sock, "/new")
		if rec.Code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /new after SIGHUP: %d %q\nlog:\n%s", rec.Code, rec.Body, w.log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if strings.Contains(w.log.String(), "operation not permitted") {
		t.Errorf("EPERM in the log:\n%s", w.log)
	}
}
