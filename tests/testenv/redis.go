package testenv

import (
	"bufio"
	"fmt"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

const redisReadyTimeout = 20 * time.Second

// Redis is a redis-server (Debian's package) on 127.0.0.1 with no
// persistence (--save "" --appendonly no), so that Kill and Restart lose
// every key, as a store without persistence does. Create it with
// StartRedis; it is stopped when the test ends.
type Redis struct {
	// Addr is 127.0.0.1:PORT; it stays the same across Restart.
	Addr string
	// URL is redis://Addr/0.
	URL string
	// Dir is its working directory, inside t.TempDir().
	Dir string

	mu  sync.Mutex
	cmd *exec.Cmd
	out *syncBuffer
	// done is closed once the process has exited.
	done chan struct{}
}

// StartRedis starts a redis-server on a free port of 127.0.0.1.
func StartRedis(t testing.TB) *Redis {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("testenv: redis-server is not installed (run tests/setup.sh as root): %v", err)
	}
	r := &Redis{Dir: t.TempDir()}
	t.Cleanup(func() { r.Kill(t) })
	// A port found free may be taken before redis binds it: try again.
	var err error
	for range 5 {
		var l net.Listener
		if l, err = net.Listen("tcp", "127.0.0.1:0"); err != nil {
			t.Fatalf("testenv: %v", err)
		}
		r.Addr = l.Addr().String()
		l.Close()
		if err = r.start(); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("testenv: redis-server: %v", err)
	}
	r.URL = "redis://" + r.Addr + "/0"
	return r
}

// Kill stops the server with SIGKILL (a crash: with no persistence every
// key is gone). It is idempotent.
func (r *Redis) Kill(t testing.TB) {
	t.Helper()
	r.mu.Lock()
	cmd, done := r.cmd, r.done
	r.cmd = nil
	r.mu.Unlock()
	if cmd == nil {
		return
	}
	_ = cmd.Process.Signal(syscall.SIGKILL)
	<-done
}

// Restart starts the server again on the same port, empty.
func (r *Redis) Restart(t testing.TB) {
	t.Helper()
	r.Kill(t)
	var err error
	for range 50 { // the port may linger a moment after the kill
		if err = r.start(); err == nil {
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("testenv: redis-server restart on %s: %v", r.Addr, err)
}

// Output is what the server logged.
func (r *Redis) Output() string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.out == nil {
		return ""
	}
	return r.out.String()
}

func (r *Redis) start() error {
	_, port, _ := net.SplitHostPort(r.Addr)
	out := &syncBuffer{}
	cmd := exec.Command("redis-server", "--bind", "127.0.0.1", "--port", port,
		"--save", "", "--appendonly", "no", "--dir", r.Dir, "--daemonize", "no", "--logfile", "")
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = time.Second
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	deadline := time.Now().Add(redisReadyTimeout)
	for {
		if ping(r.Addr) == nil {
			break
		}
		select {
		case <-done:
			return fmt.Errorf("exited while starting:\n%s", out)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-done
			return fmt.Errorf("not answering PING after %v:\n%s", redisReadyTimeout, out)
		}
	}
	r.mu.Lock()
	r.cmd, r.out, r.done = cmd, out, done
	r.mu.Unlock()
	return nil
}

// ping sends PING and expects +PONG.
func ping(addr string) error {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(time.Second))
	if _, err := c.Write([]byte("PING\r\n")); err != nil {
		return err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if strings.TrimSpace(line) != "+PONG" {
		return fmt.Errorf("PING answered %q", strconv.Quote(line))
	}
	return nil
}
