package main

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// daemon is a process the driver started. Each runs in its own process
// group, whose id is also written to <work>/pgids/<pgid>, so that the
// bench/run wrapper can kill what is left even if the driver itself dies.
type daemon struct {
	name string
	cmd  *exec.Cmd
	log  string
	done chan struct{}
}

var (
	procMu  sync.Mutex
	procs   []*daemon
	closing bool
	pgidDir string
)

// start runs argv in its own process group with stdout and stderr
// appended to logPath.
func start(name, logPath string, env []string, argv ...string) (*daemon, error) {
	procMu.Lock()
	defer procMu.Unlock()
	if closing {
		return nil, errors.New("shutting down")
	}
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	if env != nil {
		cmd.Env = env
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", name, err)
	}
	d := &daemon{name: name, cmd: cmd, log: logPath, done: make(chan struct{})}
	if pgidDir != "" {
		_ = os.WriteFile(filepath.Join(pgidDir, strconv.Itoa(cmd.Process.Pid)), []byte(name+"\n"), 0o644)
	}
	go func() { _ = cmd.Wait(); close(d.done) }()
	procs = append(procs, d)
	return d, nil
}

// exited reports whether the process has exited.
func (d *daemon) exited() bool {
	select {
	case <-d.done:
		return true
	default:
		return false
	}
}

// stop sends sig to the process group, waits up to grace, then kills the
// group. Whatever is left of the group (workers of a master that exited)
// is killed too.
func (d *daemon) stop(sig syscall.Signal, grace time.Duration) {
	pgid := d.cmd.Process.Pid
	if !d.exited() {
		_ = syscall.Kill(-pgid, sig)
		select {
		case <-d.done:
		case <-time.After(grace):
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			<-d.done
		}
	}
	// Stragglers of the group (e.g. fcgiwrap's forked workers).
	for i := 0; i < 50 && syscall.Kill(-pgid, 0) == nil; i++ {
		_ = syscall.Kill(-pgid, syscall.SIGKILL)
		time.Sleep(10 * time.Millisecond)
	}
	if pgidDir != "" {
		_ = os.Remove(filepath.Join(pgidDir, strconv.Itoa(pgid)))
	}
	procMu.Lock()
	for i, p := range procs {
		if p == d {
			procs = append(procs[:i], procs[i+1:]...)
			break
		}
	}
	procMu.Unlock()
}

// stopAll stops every daemon still running, newest first, and refuses new
// ones.
func stopAll() {
	procMu.Lock()
	closing = true
	list := append([]*daemon(nil), procs...)
	procMu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		list[i].stop(syscall.SIGTERM, 5*time.Second)
	}
}

// tail returns the last n lines of a file, for error messages.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(%v)", err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitDial waits until network/addr accepts a connection or d exits.
func waitDial(d *daemon, network, addr string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		if c, err := net.DialTimeout(network, addr, time.Second); err == nil {
			c.Close()
			return nil
		}
		if d != nil && d.exited() {
			return fmt.Errorf("%s exited before listening on %s; its log:\n%s", d.name, addr, tail(d.log, 30))
		}
		if time.Now().After(deadline) {
			msg := fmt.Sprintf("nothing listens on %s %s after %s", network, addr, timeout)
			if d != nil {
				msg += "; log of " + d.name + ":\n" + tail(d.log, 30)
			}
			return errors.New(msg)
		}
		time.Sleep(time.Millisecond)
	}
}

// waitLog waits until the file at path contains sub.
func waitLog(d *daemon, path, sub string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		b, _ := os.ReadFile(path)
		if strings.Contains(string(b), sub) {
			return nil
		}
		if d != nil && d.exited() {
			return fmt.Errorf("%s exited; its log:\n%s", d.name, tail(path, 30))
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no %q in %s after %s:\n%s", sub, path, timeout, tail(path, 30))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// oneShot is an HTTP client that opens a new connection for every request.
var oneShot = &http.Client{
	Timeout:   30 * time.Second,
	Transport: &http.Transport{DisableKeepAlives: true, Proxy: nil},
}

// get sends one GET and reads the whole answer; dur is from the request
// until the last byte of the body.
func get(url string) (status int, body string, dur time.Duration, err error) {
	t0 := time.Now()
	resp, err := oneShot.Get(url)
	if err != nil {
		return 0, "", time.Since(t0), err
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	return resp.StatusCode, string(b), time.Since(t0), err
}

// freePort returns a loopback TCP port nobody listens on right now.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// rssKiB returns VmRSS of pid in KiB.
func rssKiB(pid int) (int, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			return strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}

// children returns the pids of pid's child processes (children started by
// any of its threads).
func children(pid int) []int {
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	seen := map[int]bool{}
	var out []int
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if n, err := strconv.Atoi(f); err == nil && !seen[n] {
				seen[n] = true
				out = append(out, n)
			}
		}
	}
	return out
}

// clockTick is the kernel's USER_HZ, the unit of /proc/<pid>/stat times
// (100 on every Linux architecture Go supports).
const clockTick = 10 * time.Millisecond

// treeCPU returns the CPU time (user + system) used so far by pid and by
// every live process below it, including the children each has already
// reaped (cutime, cstime), so that short-lived CGI processes count too.
func treeCPU(pid int) time.Duration {
	total := statCPU(pid, 11, 12, 13, 14)
	for _, c := range children(pid) {
		total += treeCPU(c)
	}
	return total
}

// selfCPU returns the CPU time (user + system) of pid alone: for
// wagi-fcgi and the prototypes, the manager without its children.
func selfCPU(pid int) time.Duration { return statCPU(pid, 11, 12) }

// statCPU sums fields of /proc/<pid>/stat (utime 11, stime 12, cutime 13,
// cstime 14, counted after the command name) as CPU time.
func statCPU(pid int, fields ...int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The command name may contain spaces; the fields start after its ')'.
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	var ticks int64
	for _, i := range fields {
		if i < len(f) {
			v, _ := strconv.ParseInt(f[i], 10, 64)
			ticks += v
		}
	}
	return time.Duration(ticks) * clockTick
}

// treeSwitches returns the context switches (voluntary and not) of every
// thread of pid and of every live process below it. Processes that already
// exited are not counted.
func treeSwitches(pid int) int64 {
	var total int64
	tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "voluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				total += n
			} else if v, ok := strings.CutPrefix(line, "nonvoluntary_ctxt_switches:"); ok {
				n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
				total += n
			}
		}
	}
	for _, c := range children(pid) {
		total += treeSwitches(c)
	}
	return total
}
