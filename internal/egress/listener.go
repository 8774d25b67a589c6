package egress

import (
	"errors"
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// limitListener accepts at most cap(sem) connections at once, and
// MaxConnsPerPID of one process (more are closed at once), and records
// each one's peer pid. The same as the MFS proxy's.
type limitListener struct {
	net.Listener
	sem    chan struct{}
	mu     sync.Mutex
	perPID map[int]int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		l.sem <- struct{}{}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.sem
			return nil, err
		}
		pid, err := peerPID(c)
		if err == nil && !l.take(pid) {
			err = errors.New("too many connections")
		}
		if err != nil {
			c.Close()
			<-l.sem
			continue
		}
		return &peerConn{Conn: c, pid: pid, release: func() { l.give(pid); <-l.sem }}, nil
	}
}

func (l *limitListener) take(pid int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perPID[pid] >= MaxConnsPerPID {
		return false
	}
	l.perPID[pid]++
	return true
}

func (l *limitListener) give(pid int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perPID[pid]--; l.perPID[pid] <= 0 {
		delete(l.perPID, pid)
	}
}

// peerPID is the pid of the process that connected c (SO_PEERCRED).
func peerPID(c net.Conn) (int, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return 0, errors.New("not a unix connection")
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if cerr != nil {
		return 0, cerr
	}
	return int(cred.Pid), nil
}

type peerConn struct {
	net.Conn
	pid     int
	once    sync.Once
	release func()
}

func (c *peerConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
