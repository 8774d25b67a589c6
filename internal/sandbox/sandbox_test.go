package sandbox

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"syscall"
	"testing"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

// The test binary re-executes itself with this variable set to a probe
// name: the child installs the filter, runs the probe, and exits 0 if the
// probe's system call was allowed.
const probeEnv = "WAGI_SANDBOX_PROBE"

// probes are what the filtered child tries, by name. Each returns the
// error of the system call, if it returned at all.
var probes = map[string]func() error{
	// Allowed: what a child does all day.
	"read a file": func() error {
		_, err := os.ReadFile("/proc/self/status")
		return err
	},
	"start a thread and signal itself": func() error {
		done := make(chan error)
		go func() {
			// LockOSThread and exit: the runtime makes and ends a thread.
			defer close(done)
			runtimeLockAndExit()
		}()
		<-done
		return unix.Tgkill(os.Getpid(), unix.Gettid(), 0)
	},
	"connect a unix socket": func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err == nil {
			unix.Close(fd)
		}
		return err
	},
	// Forbidden: each must kill the process.
	"ptrace": func() error {
		_, _, e := unix.RawSyscall(unix.SYS_PTRACE, unix.PTRACE_TRACEME, 0, 0)
		return errnoErr(e)
	},
	"mount": func() error { return unix.Mount("none", "/tmp", "tmpfs", 0, "") },
	"a packet socket": func() error {
		_, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW, 0)
		return err
	},
	"fork": func() error {
		_, _, e := unix.RawSyscall(unix.SYS_CLONE, uintptr(unix.SIGCHLD), 0, 0)
		return errnoErr(e)
	},
	"execve":                 func() error { return unix.Exec("/bin/true", []string{"true"}, nil) },
	"kill another process":   func() error { return unix.Kill(os.Getppid(), 0) },
	"kill every process":     func() error { return unix.Kill(-1, 0) },
	"tgkill another process": func() error { return unix.Tgkill(os.Getppid(), os.Getppid(), 0) },
	"setuid": func() error {
		_, _, e := unix.RawSyscall(unix.SYS_SETUID, 0, 0, 0)
		return errnoErr(e)
	},
	"F_SETOWN to another process": func() error {
		_, err := unix.FcntlInt(0, unix.F_SETOWN, os.Getppid())
		return err
	},
	"process_vm_readv": func() error {
		_, _, e := unix.RawSyscall6(unix.SYS_PROCESS_VM_READV, uintptr(os.Getppid()), 0, 0, 0, 0, 0)
		return errnoErr(e)
	},
	"bpf":     func() error { _, _, e := unix.RawSyscall(unix.SYS_BPF, 0, 0, 0); return errnoErr(e) },
	"keyctl":  func() error { _, _, e := unix.RawSyscall(unix.SYS_KEYCTL, 0, 0, 0); return errnoErr(e) },
	"unshare": func() error { return unix.Unshare(unix.CLONE_NEWUSER) },
	"an IPv4 socket": func() error {
		_, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
		return err
	},
	"bind a socket": func() error {
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM, 0)
		if err != nil {
			return err
		}
		return unix.Bind(fd, &unix.SockaddrUnix{Name: "@wagi-sandbox-test"})
	},
}

func errnoErr(e syscall.Errno) error {
	if e == 0 {
		return nil
	}
	return e
}

func TestMain(m *testing.M) {
	if name := os.Getenv(probeEnv); name != "" {
		os.Exit(runProbe(name))
	}
	os.Exit(m.Run())
}

func runProbe(name string) int {
	if err := InstallFilter(); err != nil {
		fmt.Fprintln(os.Stderr, "install:", err)
		return 3
	}
	if err := probes[name](); err != nil && !errors.Is(err, unix.EPERM) && !errors.Is(err, unix.EACCES) {
		fmt.Fprintln(os.Stderr, "probe:", err)
		return 4
	}
	return 0
}

// probe runs one probe in a filtered copy of the test binary and reports
// how it ended.
func probe(t *testing.T, name string) (exitCode int, signal syscall.Signal, stderr string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), probeEnv+"="+name)
	var buf strings.Builder
	cmd.Stderr = &buf
	err := cmd.Run()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatal(err)
	}
	ws := cmd.ProcessState.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return -1, ws.Signal(), buf.String()
	}
	return ws.ExitStatus(), 0, buf.String()
}

func TestTheFilterAllowsWhatAChildNeedsAndKillsTheProcessOnAnythingElse(t *testing.T) {
	if !seccompAvailable() {
		t.Fatal("the kernel has no seccomp filters: the child's allowlist cannot be tested here")
	}
	allowed := map[string]bool{"read a file": true, "start a thread and signal itself": true, "connect a unix socket": true}
	for name := range probes {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			code, sig, stderr := probe(t, name)
			switch {
			case allowed[name] && (sig != 0 || code != 0):
				t.Fatalf("allowed call: exit %d signal %v, want exit 0\n%s", code, sig, stderr)
			case !allowed[name] && sig != syscall.SIGSYS:
				t.Fatalf("forbidden call: exit %d signal %v, want killed by SIGSYS\n%s", code, sig, stderr)
			}
		})
	}
}

func TestClone3FailsWithENOSYSSoThreadLibrariesFallBackToClone(t *testing.T) {
	p, err := Policy(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Syscalls) != 2 || len(p.Syscalls[1].Names) != 1 || p.Syscalls[1].Names[0] != "clone3" {
		t.Fatalf("the ENOSYS group is %+v, want clone3 alone", p.Syscalls[1:])
	}
	if _, err := p.Assemble(); err != nil {
		t.Fatalf("the policy does not assemble: %v", err)
	}
}

func TestIDsRoundTripThroughTheirFlagAndRejectRootOrEqualIDs(t *testing.T) {
	cases := []struct {
		flag string
		ok   bool
	}{
		{"70000:999", true},
		{"0:999", false},
		{"70000:0", false},
		{"999:999", false},
		{"70000", false},
		{"70000:999x", false},
		{"-1:999", false},
	}
	for _, tc := range cases {
		ids, err := ParseIDs(tc.flag)
		if (err == nil) != tc.ok {
			t.Errorf("ParseIDs(%q) = %v, %v; want ok=%v", tc.flag, ids, err, tc.ok)
		}
		if err == nil && ids.Flag() != tc.flag {
			t.Errorf("ParseIDs(%q).Flag() = %q", tc.flag, ids.Flag())
		}
	}
}

// runtimeLockAndExit ends the calling goroutine's thread: a goroutine that
// returns while locked to its thread takes the thread with it, so the
// runtime starts another for everything else.
func runtimeLockAndExit() { runtime.LockOSThread() }

func seccompAvailable() bool { return seccomp.Supported() }
