// Package rawio does a connection's reads and writes as raw system calls,
// for the manager's sockets (nginx's FastCGI connections and the children's
// socketpairs).
//
// Why: those sockets are non-blocking, so a read or write returns within
// microseconds, but the Go runtime treats every system call as one that
// may block. Its sysmon thread then polls at its fastest (every 20 µs)
// and hands the P of a thread caught in a slow write (one that wakes the
// peer and is pre-empted by the kernel) to another thread. On the
// development VM that bookkeeping was a fifth of the manager's CPU per
// request (perf; see manager/RATIONALE.md). Through syscall.RawConn the
// waiting still goes through the netpoller, deadlines and Close still
// work, and only the non-blocking call itself is raw.
package rawio

import (
	"errors"
	"io"
	"net"
	"os"
	"syscall"
	"unsafe"
)

// Conn is a net.Conn whose Read and Write are raw system calls. Like a
// net.Conn, it allows one Read and one Write at a time, concurrently.
type Conn struct {
	net.Conn
	rc syscall.RawConn

	// The call in progress, one per direction, so that the callbacks
	// handed to RawConn are made once and not per call.
	rbuf    []byte
	rn      int
	rerrno  syscall.Errno
	readFn  func(uintptr) bool
	wbuf    []byte
	wn      int
	werrno  syscall.Errno
	writeFn func(uintptr) bool
}

// Wrap returns c with raw reads and writes when c is backed by a file
// descriptor (TCP and unix sockets), and c itself otherwise.
func Wrap(c net.Conn) net.Conn {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return c
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return c
	}
	r := &Conn{Conn: c, rc: rc}
	r.readFn = r.doRead
	r.writeFn = r.doWrite
	return r
}

// Read reads like net.Conn.Read: it waits for data through the netpoller
// and honours the read deadline.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rbuf, c.rn, c.rerrno = p, 0, 0
	err := c.rc.Read(c.readFn)
	c.rbuf = nil
	if err != nil {
		return 0, err
	}
	if c.rerrno != 0 {
		return 0, c.opError("read", os.NewSyscallError("read", c.rerrno))
	}
	if c.rn == 0 {
		return 0, io.EOF
	}
	return c.rn, nil
}

func (c *Conn) doRead(fd uintptr) bool {
	for {
		n, _, errno := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)))
		switch errno {
		case 0:
			c.rn = int(n)
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false // wait until readable
		default:
			c.rerrno = errno
			return true
		}
	}
}

// Write writes all of p like net.Conn.Write, waiting for room through the
// netpoller and honouring the write deadline.
func (c *Conn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wbuf, c.wn, c.werrno = p, 0, 0
	err := c.rc.Write(c.writeFn)
	n := c.wn
	c.wbuf = nil
	if err != nil {
		return n, err
	}
	if c.werrno != 0 {
		return n, c.opError("write", os.NewSyscallError("write", c.werrno))
	}
	return n, nil
}

func (c *Conn) doWrite(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		rest := c.wbuf[c.wn:]
		n, _, errno := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&rest[0])), uintptr(len(rest)))
		switch errno {
		case 0:
			c.wn += int(n)
		case syscall.EINTR:
		case syscall.EAGAIN:
			return false // wait until writable
		default:
			c.werrno = errno
			return true
		}
	}
	return true
}

// CloseWrite shuts down the writing side, for conns that can (TCP and unix
// sockets), so that callers that half-close keep working through Wrap.
func (c *Conn) CloseWrite() error {
	cw, ok := c.Conn.(interface{ CloseWrite() error })
	if !ok {
		return c.opError("close", errors.ErrUnsupported)
	}
	return cw.CloseWrite()
}

// opError wraps err the way the net package does, so callers can inspect
// it as they would a net.Conn's error. An unnamed socket may have no
// address; that is not an error here.
func (c *Conn) opError(op string, err error) error {
	e := &net.OpError{Op: op, Err: err}
	if a := c.LocalAddr(); a != nil {
		e.Net, e.Source = a.Network(), a
	}
	if a := c.RemoteAddr(); a != nil {
		e.Addr = a
	}
	return e
}
