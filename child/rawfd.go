package child

import (
	"errors"
	"io"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// blockingFD is the child's end of the IPC socketpair, read and written
// with plain blocking system calls that bypass the Go scheduler.
//
// Why: a child serves one request at a time and has nothing else to do
// while it waits for the next one. Through the netpoller (net.FileConn),
// every request cost the child an epoll wakeup, and because its only P went
// idle in between, the runtime also woke its sysmon thread on the way back
// in; on the development VM that was a fifth of the child's CPU per
// request (perf, see manager/RATIONALE.md). A raw blocking read keeps the
// P "running" while the thread sleeps in the kernel: the request wakes one
// thread and nothing else.
//
// The cost is that no other goroutine of the child runs while it waits.
// None needs to: with GOMAXPROCS=1 the runtime's background work (GC
// workers, sweeping, timers) runs whenever the serve goroutine yields,
// which it does during every request. Signals that matter to a child
// (SIGKILL from the manager, PDEATHSIG) need no goroutine.
//
// A raw wait is only worth it while requests keep coming: while the
// runtime thinks the goroutine runs, its sysmon thread wakes every 10 ms
// and pre-empts it with a signal, which cost an idle child about 0.7% of
// a CPU (measured). So the raw read gives up after rawWait (SO_RCVTIMEO,
// counted across the signal-interrupted reads), and the child then waits
// in an ordinary blocking poll(2) that the runtime sees, and lets every
// thread sleep until the next request.
type blockingFD struct {
	fd int
	// polls counts the waits that went to poll(2), for tests.
	polls int
}

// rawWait is how long a child waits for its next request with a raw read
// before it waits the ordinary way.
const rawWait = 50 * time.Millisecond

// newBlockingFD takes over fd, which must be a connected stream socket,
// and puts it in blocking mode with a receive timeout of rawWait.
func newBlockingFD(fd int) (*blockingFD, error) {
	if err := unix.SetNonblock(fd, false); err != nil {
		return nil, &os.PathError{Op: "fcntl", Path: "ipc", Err: err}
	}
	tv := unix.NsecToTimeval(rawWait.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return nil, &os.PathError{Op: "setsockopt", Path: "ipc", Err: err}
	}
	return &blockingFD{fd: fd}, nil
}

func (b *blockingFD) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	var start time.Time
	for {
		n, _, errno := unix.RawSyscall(unix.SYS_READ, uintptr(b.fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch {
		case errno == unix.EINTR:
			// A signal (the runtime pre-empts a goroutine it believes
			// has run for 10 ms) ends a read that has a receive timeout
			// without restarting it, and a new read starts a new
			// timeout: count the time from the first try.
			if start.IsZero() {
				start = time.Now()
			} else if time.Since(start) >= rawWait {
				if err := b.waitReadable(); err != nil {
					return 0, err
				}
				start = time.Time{}
			}
			continue
		case errno == unix.EAGAIN:
			// Idle for rawWait: wait where the runtime can see it.
			if err := b.waitReadable(); err != nil {
				return 0, err
			}
			continue
		case errno != 0:
			return 0, &os.PathError{Op: "read", Path: "ipc", Err: errno}
		case n == 0:
			return 0, io.EOF
		}
		return int(n), nil
	}
}

// waitReadable blocks in poll(2) until the socket is readable or closed,
// as an ordinary system call: the runtime hands the P off and its threads
// sleep.
func (b *blockingFD) waitReadable() error {
	b.polls++
	fds := []unix.PollFd{{Fd: int32(b.fd), Events: unix.POLLIN}}
	for {
		_, err := unix.Poll(fds, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return &os.PathError{Op: "poll", Path: "ipc", Err: err}
		}
		return nil
	}
}

func (b *blockingFD) Write(p []byte) (int, error) {
	written := 0
	for written < len(p) {
		q := p[written:]
		n, _, errno := unix.RawSyscall(unix.SYS_WRITE, uintptr(b.fd), uintptr(unsafe.Pointer(&q[0])), uintptr(len(q)))
		switch {
		case errno == unix.EINTR:
			continue
		case errno != 0:
			return written, &os.PathError{Op: "write", Path: "ipc", Err: errno}
		}
		written += int(n)
	}
	return written, nil
}

// Close closes the descriptor.
func (b *blockingFD) Close() error {
	if b.fd < 0 {
		return errors.New("ipc: already closed")
	}
	err := unix.Close(b.fd)
	b.fd = -1
	return err
}
