// Package peerlisten is the listener of the manager's unix-socket proxies
// that children call (the MFS proxy, the egress proxy): it bounds the
// connections open at once, in all and per calling process, so that no
// child can hold what the others need, and it names each connection's
// peer process (SO_PEERCRED), which a proxy checks against the grant the
// call claims.
package peerlisten

import (
	"errors"
	"net"
	"sync"

	"golang.org/x/sys/unix"
)

// Listener accepts at most maxConns connections at once, and maxPerPID of
// one process (more are closed at once). Its connections are *Conn.
type Listener struct {
	net.Listener
	sem       chan struct{}
	maxPerPID int
	mu        sync.Mutex
	perPID    map[int]int
}

// New wraps ln, a unix-socket listener.
func New(ln net.Listener, maxConns, maxPerPID int) *Listener {
	return &Listener{Listener: ln, sem: make(chan struct{}, maxConns), maxPerPID: maxPerPID, perPID: map[int]int{}}
}

// Accept waits for a slot, then for a connection from a process under its
// bound; connections over it, or whose peer cannot be named, are closed.
func (l *Listener) Accept() (net.Conn, error) {
	for {
		l.sem <- struct{}{}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.sem
			return nil, err
		}
		pid, err := PeerPID(c)
		if err == nil && !l.take(pid) {
			err = errors.New("too many connections")
		}
		if err != nil {
			c.Close()
			<-l.sem
			continue
		}
		return &Conn{Conn: c, PID: pid, release: func() { l.give(pid); <-l.sem }}, nil
	}
}

func (l *Listener) take(pid int) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perPID[pid] >= l.maxPerPID {
		return false
	}
	l.perPID[pid]++
	return true
}

func (l *Listener) give(pid int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.perPID[pid]--; l.perPID[pid] <= 0 {
		delete(l.perPID, pid)
	}
}

// PeerPID is the pid of the process that connected c (SO_PEERCRED).
func PeerPID(c net.Conn) (int, error) {
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

// Conn is an accepted connection with its peer's pid. Closing it frees its
// slot (once).
type Conn struct {
	net.Conn
	PID     int
	once    sync.Once
	release func()
}

// Close closes the connection and frees its slot.
func (c *Conn) Close() error {
	err := c.Conn.Close()
	c.once.Do(c.release)
	return err
}
