package tests

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// Compile bombs: small modules that make wazero v1.12.0's compiler spin
// for a long time (measured on the 2-core test machine, compiled in
// process without limits: 20,000 nested loops, 60 KB, 5.4 s of CPU;
// 100,000 nested blocks, 300 KB, 28 s; a br_table of 1,000,000 targets,
// 1 MB, 155 s). They are generated here, byte by byte.

func uleb(b []byte, v uint64) []byte {
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v == 0 {
			return append(b, c)
		}
		b = append(b, c|0x80)
	}
}

func wasmSection(b []byte, id byte, body []byte) []byte {
	b = append(b, id)
	b = uleb(b, uint64(len(body)))
	return append(b, body...)
}

// wasmCommand is a module exporting _start () -> () with the given body
// (instructions, without the final end), and a custom section holding
// salt, so that equal bodies can make distinct modules (content hashes).
func wasmCommand(body []byte, salt string) []byte {
	b := []byte("\x00asm\x01\x00\x00\x00")
	b = wasmSection(b, 1, []byte{1, 0x60, 0, 0})                                   // type: func () -> ()
	b = wasmSection(b, 3, []byte{1, 0})                                            // function 0 has type 0
	b = wasmSection(b, 7, append([]byte{1, 6}, append([]byte("_start"), 0, 0)...)) // export "_start" func 0
	fn := append([]byte{0}, body...)                                               // no locals
	fn = append(fn, 0x0b)
	code := uleb(uleb(nil, 1), uint64(len(fn)))
	b = wasmSection(b, 10, append(code, fn...))
	return withSalt(b, salt)
}

// withSalt appends a custom section named "salt" to a module: valid
// WebAssembly, different bytes.
func withSalt(mod []byte, salt string) []byte {
	name := "salt"
	body := append(uleb(nil, uint64(len(name))), name...)
	body = append(body, salt...)
	return wasmSection(append([]byte(nil), mod...), 0, body)
}

// nestedBody is n nested structured instructions (0x02 block, 0x03 loop),
// each with an empty block type, and their n ends.
func nestedBody(op byte, n int) []byte {
	b := make([]byte, 0, 3*n)
	for range n {
		b = append(b, op, 0x40)
	}
	for range n {
		b = append(b, 0x0b)
	}
	return b
}

// brTableBody is one br_table with n targets, all the enclosing block.
func brTableBody(n int) []byte {
	b := []byte{0x02, 0x40, 0x41, 0x00, 0x0e} // block; i32.const 0; br_table
	b = uleb(b, uint64(n))
	for range n {
		b = append(b, 0)
	}
	return append(b, 0, 0x0b) // default target; end
}

var compileBombs = []struct {
	name string
	body []byte
}{
	{"loops", nestedBody(0x03, 20_000)},
	{"blocks", nestedBody(0x02, 100_000)},
	{"brtable", brTableBody(1_000_000)},
}

func contentKey(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// procCPU is a process's user+system CPU from /proc/<pid>/stat (10 ms
// ticks; enough to tell a few milliseconds from seconds).
func procCPU(t testing.TB, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond
}

// procMem is a process's resident memory and peak resident memory.
func procMem(t testing.TB, pid int) (rss, hwm string) {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			rss = strings.TrimSpace(v)
		}
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			hwm = strings.TrimSpace(v)
		}
	}
	return rss, hwm
}

// moduleCPUToday is the CPU the status page says module key used today,
// and whether the page lists it.
func moduleCPUToday(t testing.TB, c *client, key string) (float64, bool) {
	t.Helper()
	r := c.get("/_wagi/status?json")
	if r.status != 200 {
		t.Fatalf("status page: %d %s", r.status, r.body)
	}
	var st struct {
		Modules []struct {
			Module   string  `json:"module"`
			CPUToday float64 `json:"cpu_today_seconds"`
		} `json:"modules"`
	}
	if err := json.Unmarshal(r.body, &st); err != nil {
		t.Fatalf("status page: %v\n%s", err, r.body)
	}
	for _, m := range st.Modules {
		if m.Module == key {
			return m.CPUToday, true
		}
	}
	return 0, false
}

// TestCompileBombsCostTheirOwnCompileProcessNotTheManager serves compile
// bombs from a real kubo node, as configured modules and through the
// open gateway, behind a real nginx.
func TestCompileBombsCostTheirOwnCompileProcessNotTheManager(t *testing.T) {
	k := testenv.StartKubo(t)
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	mods := testenv.Modules(t)
	echo, err := os.ReadFile(filepath.Join(mods, "echo.wasm"))
	if err != nil {
		t.Fatal(err)
	}

	type bomb struct {
		name, route, cid, key string
		gwCID, gwKey          string // the same shape, other bytes, for the gateway
		otherCID              string // an unrelated module, first requested during the gateway bomb
	}
	var bombs []*bomb
	var routes strings.Builder
	for _, b := range compileBombs {
		bin := wasmCommand(b.body, "configured "+b.name)
		gw := wasmCommand(b.body, "gateway "+b.name)
		bm := &bomb{
			name: b.name, route: "/bomb/" + b.name,
			cid: k.AddBytes(t, bin), key: contentKey(bin),
			gwCID: k.AddBytes(t, gw), gwKey: contentKey(gw),
			otherCID: k.AddBytes(t, withSalt(echo, "unrelated "+b.name)),
		}
		bombs = append(bombs, bm)
		fmt.Fprintf(&routes, "\n[[module]]\nroute = %q\nmodule = \"ipfs://%s\"\ncompile_cpu = \"1s\"\n", bm.route, bm.cid)
	}
	// A bomb that swells rather than spins: 100,000 nested blocks pass
	// 128 MiB of address space within a fraction of a second of CPU.
	swell := wasmCommand(compileBombs[1].body, "memory")
	swellCID, swellKey := k.AddBytes(t, swell), contentKey(swell)
	fmt.Fprintf(&routes, "\n[[module]]\nroute = \"/bomb/memory\"\nmodule = \"ipfs://%s\"\ncompile_cpu = \"30s\"\ncompile_timeout = \"10s\"\ncompile_memory = \"128MiB\"\n", swellCID)
	// One bomb under a configured route and through the gateway: the same
	// bytes, so concurrent first requests on both share one compile.
	shared := wasmCommand(compileBombs[0].body, "shared")
	sharedCID, sharedKey := k.AddBytes(t, shared), contentKey(shared)
	fmt.Fprintf(&routes, "\n[[module]]\nroute = \"/bomb/shared\"\nmodule = \"ipfs://%s\"\n", sharedCID)
	config := fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"

[pool]
children = 2

[limits]
compile_cpu = "3s"
compile_timeout = "2m"

[ipfs]
api = %q
gateway = "/ipfs/"
allow = ["*"]

[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"
%s`, k.API, routes.String())
	w := startWagi(t, bin, dir, config)
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)
	// A compile under a CPU limit may take many times that in wall time
	// on a loaded machine: the requests that wait for one wait long.
	c.hc.Timeout = 10 * time.Minute
	mgr := w.cmd.Process.Pid
	compileLine := regexp.MustCompile(`msg="module remembered as bad".*cpu=(\S+) wall=(\S+) peak_rss=(\d+)`)

	for _, b := range bombs {
		t.Run("a configured "+b.name+" bomb answers 502 without costing the manager", func(t *testing.T) {
			cpu0 := procCPU(t, mgr)
			done := make(chan response, 1)
			go func() { done <- c.get(b.route) }()
			w.log.waitFor(t, 5*time.Minute, "compiling module", "key="+b.key[:12])
			// The manager answers while the bomb compiles.
			if r := c.get("/hello"); r.status != 200 || string(r.body) != "Hello, world!\n" {
				t.Fatalf("/hello during the compile: %d %q", r.status, r.body)
			}
			if strings.Contains(grepLines(w.log.String(), "key="+b.key[:12]), "remembered as bad") {
				t.Fatalf("/hello was answered only after the bomb's compile ended")
			}
			rss, hwm := procMem(t, mgr)
			r := <-done
			if r.status != 502 {
				t.Fatalf("bomb: %d %q, want 502", r.status, r.body)
			}
			line := w.log.waitFor(t, 5*time.Second, "module remembered as bad", "key="+b.key[:12])
			if !strings.Contains(line, "compile_cpu (1s)") {
				t.Errorf("the bomb was not stopped by its compile_cpu: %s", line)
			}
			used := procCPU(t, mgr) - cpu0
			m := compileLine.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("no figures in %s", line)
			}
			peak, _ := strconv.ParseInt(m[3], 10, 64)
			t.Logf("%s: compile process cpu=%s wall=%s peak_rss=%dMiB; manager cpu=%s rss=%s hwm=%s during the attempt",
				b.name, m[1], m[2], peak>>20, used, rss, hwm)
			if used > 500*time.Millisecond {
				t.Errorf("the manager used %s of CPU while the bomb was compiled elsewhere", used)
			}

			// Remembered: no second compile.
			if r := c.get(b.route); r.status != 502 {
				t.Fatalf("second request: %d %q, want 502", r.status, r.body)
			}
			if got := strings.Count(grepLines(w.log.String(), "key="+b.key[:12]), "compiling module"); got != 1 {
				t.Errorf("%d compiles of the bomb, want 1", got)
			}
			if _, err := os.Stat(filepath.Join(dir, "state", "bad", b.key)); err != nil {
				t.Errorf("no bad mark on disk: %v", err)
			}
			// Charged to the bomb: at least the second its limit allowed.
			cpu, ok := moduleCPUToday(t, c, b.key)
			if !ok || cpu < 1 {
				t.Errorf("status page: module %s listed %v with %.3fs CPU today, want ≥ 1s", b.key[:12], ok, cpu)
			}
		})
	}

	t.Run("a bomb over compile_memory answers 502 and is remembered", func(t *testing.T) {
		if r := c.get("/bomb/memory"); r.status != 502 {
			t.Fatalf("got %d %q, want 502", r.status, r.body)
		}
		line := w.log.waitFor(t, 5*time.Second, "module remembered as bad", "key="+swellKey[:12])
		// At RLIMIT_AS the Go runtime either dies ("out of memory") or,
		// when a failed mmap leaves its garbage collector stuck, sleeps:
		// then the wall limit ends it.
		if !strings.Contains(line, "compile_memory (128MiB)") && !strings.Contains(line, "compile_timeout (10s)") {
			t.Errorf("not stopped by compile_memory or compile_timeout: %s", line)
		}
		if m := compileLine.FindStringSubmatch(line); m != nil {
			t.Logf("memory: compile process cpu=%s wall=%s peak_rss=%s bytes", m[1], m[2], m[3])
		}
		if r := c.get("/bomb/memory"); r.status != 502 {
			t.Fatalf("second request: %d, want 502", r.status)
		}
		if got := strings.Count(grepLines(w.log.String(), "key="+swellKey[:12]), "compiling module"); got != 1 {
			t.Errorf("%d compiles, want 1", got)
		}
	})

	for _, b := range bombs {
		t.Run("a gateway "+b.name+" bomb does not hold up another CID's first request", func(t *testing.T) {
			cpu0 := procCPU(t, mgr)
			done := make(chan response, 1)
			go func() { done <- c.get("/ipfs/" + b.gwCID + "/") }()
			w.log.waitFor(t, 5*time.Minute, "compiling module", "key="+b.gwKey[:12])
			start := time.Now()
			r := c.do("POST", "/ipfs/"+b.otherCID+"/x", []byte("unrelated"))
			waited := time.Since(start)
			if r.status != 200 || string(r.body) != "unrelated" {
				t.Fatalf("unrelated CID: %d %q", r.status, r.body)
			}
			// Ordering, not timing: the bomb's compile was still running
			// when the unrelated module had been fetched, compiled and run.
			if strings.Contains(grepLines(w.log.String(), "key="+b.gwKey[:12]), "remembered as bad") {
				t.Fatalf("the unrelated CID was answered only after the bomb's compile ended (it took %s)", waited)
			}
			rss, hwm := procMem(t, mgr)
			if r := <-done; r.status != 502 {
				t.Fatalf("gateway bomb: %d %q, want 502", r.status, r.body)
			}
			line := w.log.waitFor(t, 5*time.Second, "module remembered as bad", "key="+b.gwKey[:12])
			m := compileLine.FindStringSubmatch(line)
			if m == nil {
				t.Fatalf("no figures in %s", line)
			}
			peak, _ := strconv.ParseInt(m[3], 10, 64)
			used := procCPU(t, mgr) - cpu0
			t.Logf("gateway %s: the unrelated CID's first request took %s; compile process cpu=%s wall=%s peak_rss=%dMiB; manager cpu=%s rss=%s hwm=%s",
				b.name, waited.Round(time.Millisecond), m[1], m[2], peak>>20, used, rss, hwm)
			cpu, ok := moduleCPUToday(t, c, b.gwKey)
			if !ok || cpu < 3 {
				t.Errorf("status page: gateway module %s listed %v with %.3fs CPU today, want ≥ 3s ([limits] compile_cpu)", b.gwKey[:12], ok, cpu)
			}
			if r := c.get("/ipfs/" + b.gwCID + "/"); r.status != 502 {
				t.Fatalf("second gateway request: %d, want 502", r.status)
			}
			if got := strings.Count(grepLines(w.log.String(), "key="+b.gwKey[:12]), "compiling module"); got != 1 {
				t.Errorf("%d compiles of the gateway bomb, want 1", got)
			}
		})
	}

	t.Run("concurrent first requests for the same bytes share one compile", func(t *testing.T) {
		first := make(chan response, 1)
		go func() { first <- c.get("/bomb/shared") }()
		w.log.waitFor(t, 5*time.Minute, "compiling module", "key="+sharedKey[:12])
		second := c.get("/ipfs/" + sharedCID + "/")
		if r := <-first; r.status != 502 || second.status != 502 {
			t.Fatalf("got %d and %d, want 502 twice", r.status, second.status)
		}
		if got := strings.Count(grepLines(w.log.String(), "key="+sharedKey[:12]), "compiling module"); got != 1 {
			t.Errorf("%d compiles, want 1", got)
		}
	})

	t.Run("check reports each bomb with its place and reason", func(t *testing.T) {
		out, errs, code := runBin(t, bin, nil, "check", "-c", filepath.Join(dir, "wagi.toml"))
		all := out + errs
		if code == 0 {
			t.Fatalf("check passed:\n%s", all)
		}
		cfgLines := strings.Split(expand(t, config, dir), "\n")
		for _, b := range bombs {
			line := 0
			for i, l := range cfgLines {
				if strings.Contains(l, b.route) {
					line = i // 1-based: the [[module]] line before the route
				}
			}
			want := fmt.Sprintf("wagi.toml:%d:", line)
			found := false
			for _, l := range strings.Split(all, "\n") {
				if strings.Contains(l, want) && strings.Contains(l, "compile_cpu (1s)") && strings.Contains(l, "remembered as bad") {
					found = true
				}
			}
			if !found {
				t.Errorf("check does not report %s at %s with its reason:\n%s", b.name, want, all)
			}
		}
	})

	t.Run("a bad mark made under a smaller limit is retried once after the limit is raised", func(t *testing.T) {
		b := bombs[0]
		cfgPath := filepath.Join(dir, "wagi.toml")
		raised := strings.Replace(expand(t, config, dir), "route = \""+b.route+"\"\nmodule = \"ipfs://"+b.cid+"\"\ncompile_cpu = \"1s\"",
			"route = \""+b.route+"\"\nmodule = \"ipfs://"+b.cid+"\"\ncompile_cpu = \"2s\"", 1)
		if raised == expand(t, config, dir) {
			t.Fatal("the config did not change")
		}
		if err := os.WriteFile(cfgPath, []byte(raised), 0o644); err != nil {
			t.Fatal(err)
		}
		if err := w.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		w.log.waitFor(t, 10*time.Minute, "msg=reloaded")
		if r := c.get(b.route); r.status != 502 {
			t.Fatalf("got %d, want 502", r.status)
		}
		lines := grepLines(w.log.String(), "key="+b.key[:12])
		if got := strings.Count(lines, "compiling module"); got != 2 {
			t.Fatalf("%d compiles, want 2 (one retry under the raised limit):\n%s", got, lines)
		}
		if !strings.Contains(lines, "compile_cpu (2s)") {
			t.Errorf("the retry was not stopped by the raised limit:\n%s", lines)
		}
		mark, err := os.ReadFile(filepath.Join(dir, "state", "bad", b.key))
		if err != nil || !strings.Contains(string(mark), `"compile_cpu":"2s"`) {
			t.Errorf("the bad mark was not renewed under 2s: %s %v", mark, err)
		}
		for _, other := range bombs[1:] {
			if got := strings.Count(grepLines(w.log.String(), "key="+other.key[:12]), "compiling module"); got != 1 {
				t.Errorf("%s: %d compiles, want 1 (its limit did not change)", other.name, got)
			}
		}
	})

	t.Run("SIGTERM during a compile stops the manager and the compile at once", func(t *testing.T) {
		slow := wasmCommand(compileBombs[2].body, "sigterm")
		cid := k.AddBytes(t, slow)
		key := contentKey(slow)
		go func() { c.hc.Get(c.base + "/ipfs/" + cid + "/") }() //nolint:errcheck // its answer does not matter
		line := w.log.waitFor(t, 5*time.Minute, "compiling module", "key="+key[:12])
		m := regexp.MustCompile(` pid=(\d+)`).FindStringSubmatch(line)
		if m == nil {
			t.Fatalf("no pid in %s", line)
		}
		pid, _ := strconv.Atoi(m[1])
		// While it works: the compile process is sandboxed like a child.
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(status), "NoNewPrivs:\t1") {
			t.Errorf("compile process %d does not have no_new_privs", pid)
		}
		if env, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid)); err != nil || len(env) != 0 {
			t.Errorf("compile process %d has an environment: %q %v", pid, env, err)
		}
		// The process sets its own limits first thing after it starts,
		// which the manager logs just before: on a loaded machine, wait
		// for them (the bomb keeps it compiling for seconds).
		wants := []string{`Max core file size\s+0\s+0`, `Max cpu time\s+\d+\s+\d+\s+seconds`, `Max address space\s+\d+\s+\d+\s+bytes`}
		var limits []byte
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
			if limits, err = os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid)); err != nil {
				t.Fatal(err)
			}
			all := true
			for _, re := range wants {
				all = all && regexp.MustCompile(re).Match(limits)
			}
			if all || time.Now().After(deadline) {
				break
			}
		}
		for _, re := range wants {
			if !regexp.MustCompile(re).Match(limits) {
				t.Errorf("compile process %d: no %s in\n%s", pid, re, limits)
			}
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			t.Fatal(err)
		}
		if f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+2:])); len(f) < 3 || f[2] != m[1] {
			t.Errorf("compile process %d is not the leader of its own process group: %s", pid, stat)
		}
		start := time.Now()
		if err := w.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		select {
		case <-w.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the manager did not exit within 10s of SIGTERM:\n%s", tail(w.log.String(), 20))
		}
		t.Logf("the manager exited %s after SIGTERM", time.Since(start).Round(time.Millisecond))
		deadline := time.Now().Add(5 * time.Second)
		for {
			_, err := os.Stat(fmt.Sprintf("/proc/%d", pid))
			if os.IsNotExist(err) {
				break
			}
			if time.Now().After(deadline) {
				st, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
				t.Fatalf("compile process %d is still there:\n%s", pid, st)
			}
			time.Sleep(20 * time.Millisecond)
		}
		// Shutting down is not the module's fault.
		if _, err := os.Stat(filepath.Join(dir, "state", "bad", key)); !os.IsNotExist(err) {
			t.Errorf("a compile cut by SIGTERM marked the module bad: %v", err)
		}
	})
}

// grepLines is the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
