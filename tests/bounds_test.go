package tests

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// tablesWAT is the attack of the "memory bounds linear memory only" issue
// (reported as 217 bytes; this one is 121): three funcref tables of 2^27
// elements (1 GiB of references each in wazero), filled. Before module
// bounds it loaded, and a child reached 2.9 GB RSS under memory = "128MiB".
const tablesWAT = `(module
  (table $a 134217728 funcref)
  (table $b 134217728 funcref)
  (table $c 134217728 funcref)
  (memory (export "memory") 1)
  (func $f)
  (elem declare func $f)
  (func (export "_start")
    (table.fill $a (i32.const 0) (ref.func $f) (i32.const 134217728))
    (table.fill $b (i32.const 0) (ref.func $f) (i32.const 134217728))
    (table.fill $c (i32.const 0) (ref.func $f) (i32.const 134217728))))
`

// growTableWAT declares a table of 0 elements with no maximum and grows it
// by 65536 elements at a time until table.grow returns -1, or until it has
// 2^24 elements (128 MiB of references: the guard keeps the test harmless
// on a server without module bounds); then it answers the table's size.
const growTableWAT = `(module
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (table $t 0 funcref)
  (data (i32.const 0) "Content-Type: text/plain\n\ntable size ")
  (func $write (param $ptr i32) (param $len i32)
    (i32.store (i32.const 1024) (local.get $ptr))
    (i32.store (i32.const 1028) (local.get $len))
    (drop (call $fd_write (i32.const 1) (i32.const 1024) (i32.const 1) (i32.const 1032))))
  (func (export "_start")
    (local $n i32) (local $p i32)
    (block $done
      (loop $grow
        (br_if $done (i32.ge_u (table.size $t) (i32.const 16777216)))
        (br_if $done (i32.eq (table.grow $t (ref.null func) (i32.const 65536)) (i32.const -1)))
        (br $grow)))
    (local.set $n (table.size $t))
    (local.set $p (i32.const 2100))
    (i32.store8 (i32.const 2100) (i32.const 10))
    (loop $digits
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p) (i32.add (i32.const 48) (i32.rem_u (local.get $n) (i32.const 10))))
      (local.set $n (i32.div_u (local.get $n) (i32.const 10)))
      (br_if $digits (local.get $n)))
    (call $write (i32.const 0) (i32.const 37))
    (call $write (local.get $p) (i32.sub (i32.const 2101) (local.get $p)))))
`

// wat2wasm builds a module from WAT text into dir/name.wasm.
func wat2wasm(t *testing.T, dir, name, wat string) string {
	t.Helper()
	src := filepath.Join(dir, name+".wat")
	out := filepath.Join(dir, name+".wasm")
	if err := os.WriteFile(src, []byte(wat), 0o644); err != nil {
		t.Fatal(err)
	}
	if b, err := exec.Command("wat2wasm", "-o", out, src).CombinedOutput(); err != nil {
		t.Fatalf("wat2wasm %s: %v\n%s", name, err, b)
	}
	return out
}

// boundModules are modules over wagi-fcgi's bounds, each with the words
// that must name the problem.
func boundModules(t *testing.T, dir string) []struct{ name, path, want string } {
	tables := wat2wasm(t, dir, "tables", tablesWAT)
	hdr := []byte("\x00asm\x01\x00\x00\x00")
	// A name section that claims 2^32-1 function names: 22 bytes that made
	// wazero ask the Go runtime for 96 GiB (fatal, in the manager).
	names := append(append([]byte{4}, "name"...), 1, 5)
	names = append(hdr, wasmSection(nil, 0, append(names, uleb(nil, 0xffffffff)...))...)
	// One function whose body declares 2^32-1 locals in 8 bytes.
	locals := append([]byte(nil), hdr...)
	locals = append(locals, wasmSection(nil, 1, []byte{1, 0x60, 0, 0})...)
	locals = append(locals, wasmSection(nil, 3, []byte{1, 0})...)
	locals = append(locals, wasmSection(nil, 10, append([]byte{1, 8, 1}, append(uleb(nil, 0xffffffff), 0x7f, 0x0b)...))...)
	for name, b := range map[string][]byte{"names": names, "locals": locals} {
		if err := os.WriteFile(filepath.Join(dir, name+".wasm"), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return []struct{ name, path, want string }{
		{"three tables of 2^27 elements", tables, "table 0 declares 134217728 elements, over the bound of 1048576"},
		{"a name section claiming 2^32-1 names", filepath.Join(dir, "names.wasm"), "4294967295 function names declared"},
		{"a function declaring 2^32-1 locals", filepath.Join(dir, "locals.wasm"), "function body 0 declares 4294967295 locals, over the bound of 50000"},
	}
}

func TestAModuleOverTheBoundsIsRefusedAtLoad(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	for _, m := range boundModules(t, dir) {
		config := fmt.Sprintf(`listen = "unix:%s/wagi.sock"
state_dir = "%s/state"

[[module]]
route = "/hello"
module = "%s"
`, dir, dir, m.path)
		cfg := filepath.Join(dir, "wagi.toml")
		if err := os.WriteFile(cfg, []byte(config), 0o644); err != nil {
			t.Fatal(err)
		}
		// A crash (the Go runtime's exit status 2) is not a refusal.
		t.Run("check refuses "+m.name+" with its place and the numbers", func(t *testing.T) {
			out, errs, code := runBin(t, bin, nil, "check", "-c", cfg)
			all := out + errs
			if code != 1 || !strings.Contains(all, "wagi.toml:4") || !strings.Contains(all, filepath.Base(m.path)) || !strings.Contains(all, m.want) {
				t.Fatalf("exit %d, want 1 and wagi.toml:4, %s, %q:\n%s", code, filepath.Base(m.path), m.want, all)
			}
		})
		t.Run("serve refuses "+m.name, func(t *testing.T) {
			// A serve that accepted the module would serve until killed.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, "serve", "-c", cfg)
			var errb bytes.Buffer
			cmd.Stderr = &errb
			_ = cmd.Run()
			errs, code := errb.String(), cmd.ProcessState.ExitCode()
			if code != 1 || !strings.Contains(errs, m.want) {
				t.Fatalf("exit %d, want 1 and %q:\n%s", code, m.want, errs)
			}
		})
		t.Run("run refuses "+m.name, func(t *testing.T) {
			_, errs, code := runBin(t, bin, nil, "run", "--state-dir", filepath.Join(dir, "state"), m.path)
			if code == 0 || code == 2 || !strings.Contains(errs, m.want) {
				t.Fatalf("exit %d, want a refusal with %q:\n%s", code, m.want, errs)
			}
		})
	}
}

// procStatus reads the kB value of a /proc/PID/status field.
func procStatus(t *testing.T, pid int, field string) int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^` + field + `:\s+(\d+) kB`).FindSubmatch(b)
	if m == nil {
		t.Fatalf("no %s in /proc/%d/status", field, pid)
	}
	n, _ := strconv.ParseInt(string(m[1]), 10, 64)
	return n << 10
}

func TestATableGrownInALoopStopsAtTheBound(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	grow := wat2wasm(t, dir, "growtable", growTableWAT)
	w := startWagi(t, bin, dir, `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
status_path = "/_wagi/status"
[pool]
children = 1
[[module]]
route = "/grow"
module = "`+grow+`"
[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"
`)
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)
	pid := w.waitChildren(t, 1, 5*time.Second)[0]
	var peak int64
	for i := 0; i < 3; i++ {
		r := c.get("/grow")
		// table.grow returned -1 at the bound (1 Mi elements, reached in
		// steps of 65536); without bounds the guard stops it at 2^24.
		if r.status != 200 || string(r.body) != "table size 1048576\n" {
			t.Fatalf("request %d: %d %q, want 200 \"table size 1048576\\n\"", i, r.status, r.body)
		}
		peak = procStatus(t, pid, "VmHWM")
	}
	if got := w.children(t); len(got) != 1 || got[0] != pid {
		t.Fatalf("children %v: the child serving /grow was replaced", got)
	}
	// 1 Mi references are 8 MiB per instance; the child's peak RSS stays
	// under 128 MiB (an unbounded table of 2^24 elements alone is 128 MiB).
	t.Logf("peak RSS of the child after three requests: %d KiB", peak>>10)
	if peak > 128<<20 {
		t.Errorf("peak RSS %d MiB, want under 128 MiB", peak>>20)
	}
	// The child applied the same bounds to the stored bytes as the manager
	// and compiled the same bytes: one cache entry per module, not two
	// for the module whose table was given a maximum.
	var entries []string
	_ = filepath.WalkDir(filepath.Join(dir, "state", "compilation-cache"), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			entries = append(entries, p)
		}
		return nil
	})
	if len(entries) != 2 {
		t.Errorf("compilation cache has %d entries for 2 modules: %v", len(entries), entries)
	}
	// The status page still shows the child's RSS.
	r := c.get("/_wagi/status?full")
	if m := regexp.MustCompile(`rss bytes:\s+(\d+)`).FindSubmatch(r.body); r.status != 200 || m == nil {
		t.Fatalf("status page: %d, no rss:\n%s", r.status, r.body)
	}
}

func TestAChildPastChildMemoryDiesAndIsReplaced(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	// A child's address space at rest is mostly the Go runtime's
	// reservations and depends on the machine: measure it, then allow
	// 384 MiB more, well below the 1 GiB the memory bomb may grow to.
	base := func() int64 {
		sub := filepath.Join(dir, "measure")
		if err := os.MkdirAll(sub, 0o755); err != nil {
			t.Fatal(err)
		}
		w := startWagi(t, bin, sub, `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 1
[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"
`, "--http", fmt.Sprintf("127.0.0.1:%d", freePort(t)))
		pid := w.waitChildren(t, 1, 5*time.Second)[0]
		vm := procStatus(t, pid, "VmSize")
		w.stop(t)
		return vm
	}()
	limit := (base + 384<<20 + 1<<20 - 1) >> 20 << 20
	w := startWagi(t, bin, dir, fmt.Sprintf(`
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 1
child_memory = %d
[[module]]
route = "/grow"
module = "{{mods}}/grow.wasm"
memory = "1GiB"
[[module]]
route = "/hello"
module = "{{mods}}/hello.wasm"
`, limit))
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)
	pid := w.waitChildren(t, 1, 5*time.Second)[0]
	lim, err := os.ReadFile(fmt.Sprintf("/proc/%d/limits", pid))
	if err != nil {
		t.Fatal(err)
	}
	if want := fmt.Sprintf(`Max address space\s+%d\s+%d\s+bytes`, limit, limit); !regexp.MustCompile(want).Match(lim) {
		t.Fatalf("child %d limits lack %q:\n%s", pid, want, lim)
	}
	if r := c.get("/hello"); r.status != 200 {
		t.Fatalf("hello under child_memory: %d %q", r.status, r.body)
	}
	r := c.get("/grow")
	if r.status != 502 || !bytes.Contains(r.body, []byte("request id: ")) {
		t.Fatalf("memory bomb past child_memory: %d %q, want 502 with a request id", r.status, r.body)
	}
	w.log.waitFor(t, 5*time.Second, "died")
	w.log.waitFor(t, 5*time.Second, "out of memory")
	if got := w.waitChildren(t, 1, 5*time.Second); got[0] == pid {
		t.Fatalf("child %d was not replaced", pid)
	}
	if r := c.get("/hello"); r.status != 200 {
		t.Fatalf("hello after the replacement: %d %q", r.status, r.body)
	}
}
