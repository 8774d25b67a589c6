// Package listen opens the manager's FastCGI listener: a unix socket with
// the configured owner, group and mode, a TCP address, or a socket handed
// over by systemd (LISTEN_FDS).
package listen

import (
	"fmt"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"syscall"
	"time"
)

// Spec says where to listen.
type Spec struct {
	Network string      // "unix" or "tcp"
	Address string      // socket path or host:port
	Mode    os.FileMode // unix socket permissions
	Owner   string      // user name or uid; "" keeps the manager's
	Group   string      // group name or gid; "" keeps the manager's
}

// Systemd returns the first socket passed by systemd socket activation, or
// nil when this process was not started that way. It clears the variables
// so children never see them.
func Systemd() (net.Listener, error) {
	pid, err := strconv.Atoi(os.Getenv("LISTEN_PID"))
	if err != nil || pid != os.Getpid() {
		return nil, nil
	}
	n, err := strconv.Atoi(os.Getenv("LISTEN_FDS"))
	if err != nil || n < 1 {
		return nil, nil
	}
	os.Unsetenv("LISTEN_PID")
	os.Unsetenv("LISTEN_FDS")
	os.Unsetenv("LISTEN_FDNAMES")
	const firstFD = 3
	for fd := firstFD + 1; fd < firstFD+n; fd++ {
		syscall.CloseOnExec(fd) // only the first socket is used
	}
	f := os.NewFile(firstFD, "systemd-socket")
	syscall.CloseOnExec(firstFD)
	l, err := net.FileListener(f)
	f.Close()
	if err != nil {
		return nil, fmt.Errorf("systemd socket (LISTEN_FDS): %w", err)
	}
	return l, nil
}

// Open opens the listener described by s. For a unix socket it removes a
// stale socket file left by a dead manager, but refuses to take over one
// that still answers.
func Open(s Spec) (net.Listener, error) {
	switch s.Network {
	case "tcp":
		l, err := net.Listen("tcp", s.Address)
		if err != nil {
			return nil, fmt.Errorf("listen tcp:%s: %w", s.Address, err)
		}
		return l, nil
	case "unix":
		return openUnix(s)
	}
	return nil, fmt.Errorf("listen: unknown network %q", s.Network)
}

func openUnix(s Spec) (net.Listener, error) {
	path := s.Address
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("listen unix:%s: %w", path, err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode()&os.ModeSocket == 0 {
			return nil, fmt.Errorf("listen unix:%s: exists and is not a socket", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("listen unix:%s: another process is serving this socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("listen unix:%s: remove stale socket: %w", path, err)
		}
	}
	l, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen unix:%s: %w", path, err)
	}
	// The socket file is removed when the listener closes.
	l.(*net.UnixListener).SetUnlinkOnClose(true)
	if err := setPerms(path, s); err != nil {
		l.Close()
		return nil, fmt.Errorf("listen unix:%s: %w", path, err)
	}
	return l, nil
}

func setPerms(path string, s Spec) error {
	uid, gid := -1, -1
	if s.Owner != "" {
		u, err := lookupUser(s.Owner)
		if err != nil {
			return fmt.Errorf("listen_owner %q: %w", s.Owner, err)
		}
		uid = u
	}
	if s.Group != "" {
		g, err := lookupGroup(s.Group)
		if err != nil {
			return fmt.Errorf("listen_group %q: %w", s.Group, err)
		}
		gid = g
	}
	if uid != -1 || gid != -1 {
		if err := os.Lchown(path, uid, gid); err != nil {
			return err
		}
	}
	if s.Mode != 0 {
		if err := os.Chmod(path, s.Mode); err != nil {
			return err
		}
	}
	return nil
}

func lookupUser(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil {
		return n, nil
	}
	u, err := user.Lookup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(u.Uid)
}

func lookupGroup(name string) (int, error) {
	if n, err := strconv.Atoi(name); err == nil {
		return n, nil
	}
	g, err := user.LookupGroup(name)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(g.Gid)
}
