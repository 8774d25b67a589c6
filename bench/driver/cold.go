package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// coldRow is one row of the cold-path table.
type coldRow struct {
	path, module string
	samples      []time.Duration
	note         string
}

// memRow is one row of the memory table.
type memRow struct {
	modules              int
	manager              int   // KiB
	childrenIdle, loaded []int // KiB, per child, after start and after the requests
	requests             int
}

// runCold measures wagi-fcgi's cold paths behind nginx.
func (b *bench) runCold(ctx context.Context) (string, error) {
	hdr := b.header("Cold paths of wagi-fcgi (behind nginx, shipped snippet)")
	upstreams := fmt.Sprintf("    upstream wagi_fcgi { server unix:%s; keepalive 16; }\n", b.path("wagi.sock"))
	if _, err := b.startNginx(upstreams, "        location / { include snippets/wagi-fcgi-location.conf; }\n"); err != nil {
		return "", err
	}
	logf("nginx listens on 127.0.0.1:%d", b.port)

	var rows []*coldRow
	mods := map[string]string{"C hello": "hello.wasm", "Go hello": "gohello.wasm"}
	order := []string{"C hello", "Go hello"}

	// 1 and 3: a module from a file with a fresh state_dir, then a restart
	// on the same state_dir (warm compilation cache).
	for _, name := range order {
		fresh := &coldRow{path: "manager start, fresh state_dir (exec → listening: validate + compile + start children)", module: name}
		freshReq := &coldRow{path: "first request after that start", module: name}
		warm := &coldRow{path: "manager restart, warm compilation cache (exec → listening)", module: name}
		warmReq := &coldRow{path: "first request after the restart", module: name}
		for i := 0; i < b.reps; i++ {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			cfg := b.wagiConfig(fmt.Sprintf("state-file-%s-%d", mods[name], i), "", fmt.Sprintf(`
[[module]]
route = "/hello"
module = "%s/%s"
`, b.mods, mods[name]))
			for _, pass := range []struct{ start, req *coldRow }{{fresh, freshReq}, {warm, warmReq}} {
				d, took, err := b.startWagi(fmt.Sprintf("wagi-file-%d", i), cfg)
				if err != nil {
					return "", err
				}
				pass.start.samples = append(pass.start.samples, took)
				rt, err := b.expectHello("/hello")
				if err != nil {
					return "", fmt.Errorf("%s: %w\nmanager log:\n%s", name, err, tail(d.log, 20))
				}
				pass.req.samples = append(pass.req.samples, rt)
				d.stop(syscall.SIGTERM, 10*time.Second)
			}
		}
		logf("%s from a file: start %s, first request %s; restart %s, first request %s", name,
			fmtDur(median(fresh.samples)), fmtDur(median(freshReq.samples)), fmtDur(median(warm.samples)), fmtDur(median(warmReq.samples)))
		rows = append(rows, fresh, freshReq, warm, warmReq)
	}

	// 2: first request for a new module by CID, through gateway mode; each
	// sample is a distinct module (the hello bytes plus a custom section),
	// so each is a fetch, a validation, a compile and a child's first use.
	if b.kubo == "" {
		return "", fmt.Errorf("-kubo is required in cold mode")
	}
	api, err := b.startKubo(ctx)
	if err != nil {
		return "", err
	}
	logf("kubo daemon (offline) API %s", api)
	cids := map[string][]string{}
	for _, name := range order {
		src, err := os.ReadFile(filepath.Join(b.mods, mods[name]))
		if err != nil {
			return "", err
		}
		for i := 0; i < b.reps; i++ {
			p := b.path("mods", fmt.Sprintf("cid-%d-%s", i, mods[name]))
			if err := writeFile(p, string(withCustomSection(src, "wagi-bench", fmt.Sprintf("cid %s %d %d", name, i, time.Now().UnixNano()))), 0o644); err != nil {
				return "", err
			}
			cid, err := b.ipfs(ctx, "add", "-Q", "--cid-version=1", p)
			if err != nil {
				return "", err
			}
			cids[name] = append(cids[name], strings.TrimSpace(cid))
		}
	}
	cfg := b.wagiConfig("state-cid", fmt.Sprintf(`
[ipfs]
api = "%s"
gateway = "/ipfs/"
allow = ["*"]
`, api), "")
	d, _, err := b.startWagi("wagi-cid", cfg)
	if err != nil {
		return "", err
	}
	for _, name := range order {
		row := &coldRow{path: "first request for a new module by CID (gateway /ipfs/CID/: fetch from kubo + validate + compile + run)", module: name}
		for _, cid := range cids[name] {
			rt, err := b.expectHello("/ipfs/" + cid + "/")
			if err != nil {
				return "", fmt.Errorf("%s by CID: %w\nmanager log:\n%s", name, err, tail(d.log, 20))
			}
			row.samples = append(row.samples, rt)
		}
		// For comparison, the same CIDs once every child has run them: the
		// pool hands out idle children in FIFO order, so nproc-1 more
		// requests reach the other children first.
		again := &coldRow{path: "the same CIDs again, once every child has run them (warm)", module: name}
		for _, cid := range cids[name] {
			for j := 0; j < b.nproc-1; j++ {
				if _, err := b.expectHello("/ipfs/" + cid + "/"); err != nil {
					return "", err
				}
			}
			rt, err := b.expectHello("/ipfs/" + cid + "/")
			if err != nil {
				return "", err
			}
			again.samples = append(again.samples, rt)
		}
		logf("%s by CID: first %s, again %s", name, fmtDur(median(row.samples)), fmtDur(median(again.samples)))
		rows = append(rows, row, again)
	}
	d.stop(syscall.SIGTERM, 10*time.Second)

	// 4: timeout → 504.
	cfg = b.wagiConfig("state-sleep", "", fmt.Sprintf(`
[[module]]
route = "/sleep"
module = "%s/sleep.wasm"
timeout = "200ms"
`, b.mods))
	d, _, err = b.startWagi("wagi-sleep", cfg)
	if err != nil {
		return "", err
	}
	row504 := &coldRow{path: "timeout → 504: wall time of `/sleep?60000` minus the 200 ms `timeout`", module: "sleep.wasm"}
	for i := 0; i < b.reps; i++ {
		// Let the pool replace the killed child first.
		if err := waitChildren(d, b.nproc, 10*time.Second); err != nil {
			return "", err
		}
		st, body, took, err := get(b.url("/sleep?60000"))
		if err != nil || st != 504 {
			return "", fmt.Errorf("/sleep?60000: status %d body %q err %v", st, body, err)
		}
		row504.samples = append(row504.samples, took-200*time.Millisecond)
	}
	d.stop(syscall.SIGTERM, 10*time.Second)
	logf("timeout → 504 overhead %s", fmtDur(median(row504.samples)))
	rows = append(rows, row504)

	// 5: memory with 1, 10 and 100 distinct modules.
	hello, err := os.ReadFile(filepath.Join(b.mods, "hello.wasm"))
	if err != nil {
		return "", err
	}
	var mem []memRow
	for _, n := range []int{1, 10, 100} {
		var routes strings.Builder
		for i := 0; i < n; i++ {
			p := b.path("mods", fmt.Sprintf("mem-%d.wasm", i))
			if err := writeFile(p, string(withCustomSection(hello, "wagi-bench", fmt.Sprintf("module %d", i))), 0o644); err != nil {
				return "", err
			}
			fmt.Fprintf(&routes, "\n[[module]]\nroute = \"/m/%d\"\nmodule = %q\n", i, p)
		}
		cfg := b.wagiConfig(fmt.Sprintf("state-mem-%d", n), "", routes.String())
		d, _, err := b.startWagi(fmt.Sprintf("wagi-mem-%d", n), cfg)
		if err != nil {
			return "", err
		}
		if err := waitChildren(d, b.nproc, 10*time.Second); err != nil {
			return "", err
		}
		time.Sleep(300 * time.Millisecond)
		r := memRow{modules: n}
		pid := d.cmd.Process.Pid
		for _, c := range children(pid) {
			kb, _ := rssKiB(c)
			r.childrenIdle = append(r.childrenIdle, kb)
		}
		// The pool hands out idle children in FIFO order, so nproc
		// requests in a row reach every child: each child loads every module.
		for i := 0; i < n; i++ {
			for j := 0; j < b.nproc; j++ {
				if _, err := b.expectHello(fmt.Sprintf("/m/%d", i)); err != nil {
					return "", fmt.Errorf("memory, %d modules: %w\nmanager log:\n%s", n, err, tail(d.log, 20))
				}
				r.requests++
			}
		}
		time.Sleep(300 * time.Millisecond)
		if r.manager, err = rssKiB(pid); err != nil {
			return "", err
		}
		for _, c := range children(pid) {
			kb, _ := rssKiB(c)
			r.loaded = append(r.loaded, kb)
		}
		d.stop(syscall.SIGTERM, 10*time.Second)
		logf("%d modules: manager %d KiB, children %v KiB (after start %v)", n, r.manager, r.loaded, r.childrenIdle)
		mem = append(mem, r)
	}

	var sb strings.Builder
	sb.WriteString(hdr)
	fmt.Fprintf(&sb, "- each latency is measured %d times, with a new HTTP connection to nginx each time; the table shows the median (and min–max)\n", b.reps)
	fmt.Fprintf(&sb, "- pool: %d children; kubo %s offline on loopback\n", b.nproc, firstLine(cmdOut(b.kubo, "version")))
	sb.WriteString("\n| cold path | module | median | min – max |\n|---|---|---:|---:|\n")
	for _, r := range rows {
		m := median(r.samples) // sorts
		fmt.Fprintf(&sb, "| %s | %s | %s | %s – %s |\n", r.path, r.module, fmtDur(m), fmtDur(r.samples[0]), fmtDur(r.samples[len(r.samples)-1]))
	}
	sb.WriteString("\nMemory (VmRSS), distinct C hello modules (hello.wasm plus a distinct custom section), " +
		"each module requested once per child:\n\n")
	sb.WriteString("| modules | manager | each child after start | each child after the requests | manager + children |\n|---:|---:|---:|---:|---:|\n")
	for _, r := range mem {
		total := r.manager
		for _, c := range r.loaded {
			total += c
		}
		fmt.Fprintf(&sb, "| %d | %s | %s | %s | %s |\n", r.modules, mib(r.manager), mibs(r.childrenIdle), mibs(r.loaded), mib(total))
	}
	return sb.String(), nil
}

// wagiConfig is a manager config on the shared socket with its own state dir.
func (b *bench) wagiConfig(state, extra, modules string) string {
	return fmt.Sprintf(`# generated by bench/driver
listen = "unix:%s"
state_dir = "%s"

[pool]
children = %d
%s%s`, b.path("wagi.sock"), b.path(state), b.nproc, extra, modules)
}

// startWagi writes cfg and runs `wagi-fcgi serve` on it; took is from the
// exec until the socket accepts a connection (the manager listens once
// every module is compiled and the children run).
func (b *bench) startWagi(name, cfg string) (*daemon, time.Duration, error) {
	cfgPath := b.path(name + ".toml")
	if err := writeFile(cfgPath, cfg, 0o644); err != nil {
		return nil, 0, err
	}
	sock := b.path("wagi.sock")
	_ = os.Remove(sock)
	t0 := time.Now()
	d, err := start(name, b.path("logs", name+".log"), []string{"PATH=/usr/local/bin:/usr/bin:/bin"},
		b.bin+"/wagi-fcgi", "serve", "-c", cfgPath)
	if err != nil {
		return nil, 0, err
	}
	if err := waitDial(d, "unix", sock, 120*time.Second); err != nil {
		return nil, 0, err
	}
	return d, time.Since(t0), nil
}

// expectHello sends one GET through nginx on a new connection and checks
// the hello answer.
func (b *bench) expectHello(path string) (time.Duration, error) {
	st, body, took, err := get(b.url(path))
	if err != nil {
		return 0, fmt.Errorf("GET %s: %w", path, err)
	}
	if st != 200 || !isHello(body) {
		return 0, fmt.Errorf("GET %s: status %d, body %q", path, st, body)
	}
	return took, nil
}

// waitChildren waits until the manager has n child processes.
func waitChildren(d *daemon, n int, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for len(children(d.cmd.Process.Pid)) != n {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s has %d children, want %d", d.name, len(children(d.cmd.Process.Pid)), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return nil
}

// withCustomSection returns wasm with a custom section (id 0) appended:
// a distinct module with the same code.
func withCustomSection(wasm []byte, name, data string) []byte {
	payload := append(uleb(uint64(len(name))), name...)
	payload = append(payload, data...)
	out := append([]byte(nil), wasm...)
	out = append(out, 0)
	out = append(out, uleb(uint64(len(payload)))...)
	return append(out, payload...)
}

func uleb(v uint64) []byte {
	var out []byte
	for {
		c := byte(v & 0x7f)
		v >>= 7
		if v != 0 {
			out = append(out, c|0x80)
			continue
		}
		return append(out, c)
	}
}

// startKubo initialises a kubo repo in the work dir (profile test, then
// offline and loopback-only, as tests/testenv does), starts
// `ipfs daemon --offline` and returns its API multiaddr.
func (b *bench) startKubo(ctx context.Context) (string, error) {
	repo := b.path("ipfs")
	if _, err := b.ipfs(ctx, "init", "--profile=test"); err != nil {
		return "", err
	}
	cfgPath := filepath.Join(repo, "config")
	data, err := os.ReadFile(cfgPath)
	if err != nil {
		return "", err
	}
	var cfg map[string]any
	if err := json.Unmarshal(data, &cfg); err != nil {
		return "", err
	}
	for key, v := range map[string]any{
		"Addresses.API":                         "/ip4/127.0.0.1/tcp/0",
		"Addresses.Gateway":                     "/ip4/127.0.0.1/tcp/0",
		"Addresses.Swarm":                       []string{},
		"Addresses.Announce":                    []string{},
		"Addresses.AppendAnnounce":              []string{},
		"Bootstrap":                             []string{},
		"Discovery.MDNS.Enabled":                false,
		"AutoConf.Enabled":                      false,
		"AutoTLS.Enabled":                       false,
		"Swarm.DisableNatPortMap":               true,
		"Routing.Type":                          "none",
		"Plugins.Plugins.telemetry.Config.Mode": "off",
	} {
		m := cfg
		parts := strings.Split(key, ".")
		for _, p := range parts[:len(parts)-1] {
			sub, ok := m[p].(map[string]any)
			if !ok {
				sub = map[string]any{}
				m[p] = sub
			}
			m = sub
		}
		m[parts[len(parts)-1]] = v
	}
	if data, err = json.MarshalIndent(cfg, "", "  "); err != nil {
		return "", err
	}
	if err := os.WriteFile(cfgPath, data, 0o600); err != nil {
		return "", err
	}
	logPath := b.path("logs", "kubo.log")
	d, err := start("kubo", logPath, b.ipfsEnv(), b.kubo, "daemon", "--offline")
	if err != nil {
		return "", err
	}
	if err := waitLog(d, logPath, "Daemon is ready", 60*time.Second); err != nil {
		return "", err
	}
	api, err := os.ReadFile(filepath.Join(repo, "api"))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(api)), nil
}

func (b *bench) ipfsEnv() []string {
	return append(os.Environ(), "IPFS_PATH="+b.path("ipfs"), "IPFS_TELEMETRY=off")
}

// ipfs runs the kubo CLI on the bench repo (through the daemon once it runs).
func (b *bench) ipfs(ctx context.Context, args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.kubo, args...)
	cmd.Env = b.ipfsEnv()
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("ipfs %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return string(out), nil
}

func mib(kib int) string { return fmt.Sprintf("%.1f MiB", float64(kib)/1024) }

func mibs(kibs []int) string {
	if len(kibs) == 0 {
		return "–"
	}
	s := make([]string, len(kibs))
	for i, k := range kibs {
		s[i] = fmt.Sprintf("%.1f", float64(k)/1024)
	}
	return strings.Join(s, ", ") + " MiB"
}
