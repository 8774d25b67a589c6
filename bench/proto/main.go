// Command proto holds the two prototypes of issue 13's hot path, built to
// be measured side by side with wagi-fcgi and php-fpm by bench/driver
// (locations /proto-direct and /proto-handback). They are prototypes: the
// guest runs (the same wazero instantiate-per-request as a child), but
// there are no limits, kills, routing, queue or output checks; what they
// measure is the cost of the process layout around the guest.
//
//   - direct: the manager accepts, hands every connection's descriptor to
//     every child once (SCM_RIGHTS, at one agreed descriptor number), and
//     registers it in one epoll set shared by the children with
//     EPOLLONESHOT. An idle child takes the next ready request from any
//     connection, answers it on the connection itself and re-arms it. The
//     manager is not woken per request.
//   - handback: the manager reads every request (Go netpoller, as today)
//     and passes it to an idle child, which writes the answer to the web
//     server itself and hands itself back through shared memory; the
//     manager is woken once per request instead of twice.
//
// In both, each child has a scoreboard slot in shared memory that only it
// writes (state, connection, requests done) and the manager a page that
// children only read; the manager reads the slots and the children's CPU
// clocks on a 5 ms tick while any request runs, and sleeps when none does.
//
// Usage: proto -design direct|handback -children N -listen unix:PATH -module M.wasm
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"os/signal"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Descriptor numbers fixed for children (ExtraFiles order).
const (
	fdCtrl  = 3
	fdMgr   = 4
	fdSlot  = 5
	fdEpoll = 6
	// connBase is where connection descriptors live, in the manager and
	// in every child, so that a child can re-arm the manager's epoll
	// registration (epoll keys it by file and descriptor number).
	connBase = 1000
	maxConns = 1024
	tick     = 5 * time.Millisecond
)

// Offsets in the manager's page (children map it read-only).
const (
	offSleep = 0  // odd while the manager sleeps: a child taking a request wakes it
	offWait  = 8  // odd while the manager waits for a free child (handback)
	offSent  = 64 // uint64 per child: control messages sent to it (direct)
)

// Offsets in a child's own slot page (only that child writes it).
const (
	offState = 0 // 1 while a request runs
	offConn  = 4
	offDone  = 8 // requests finished
)

func u32(b []byte, off int) *atomic.Uint32 { return (*atomic.Uint32)(unsafe.Pointer(&b[off])) }
func u64(b []byte, off int) *atomic.Uint64 { return (*atomic.Uint64)(unsafe.Pointer(&b[off])) }

func main() {
	if len(os.Args) > 1 && os.Args[1] == "child" {
		if err := childMain(os.Args[2]); err != nil {
			log.Fatalf("child: %v", err)
		}
		return
	}
	design := flag.String("design", "direct", "direct or handback")
	children := flag.Int("children", 2, "child processes")
	listen := flag.String("listen", "", "unix:PATH")
	module := flag.String("module", "", "WASI module")
	flag.Parse()
	path, ok := strings.CutPrefix(*listen, "unix:")
	if !ok || *module == "" || (*design != "direct" && *design != "handback") {
		flag.Usage()
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	s, err := newSupervisor(*design, *children, *module)
	if err != nil {
		log.Fatal(err)
	}
	defer s.stop()
	go s.supervise(ctx)
	if *design == "direct" {
		err = s.serveDirect(ctx, path)
	} else {
		err = s.serveHandback(ctx, path)
	}
	if err != nil && ctx.Err() == nil {
		log.Fatal(err)
	}
}

type child struct {
	pid  int
	ctrl int    // manager's end of the control socketpair
	slot []byte // the child's scoreboard slot (the manager maps it too)
	// handback: requests assigned, and which connection generation the
	// child holds a descriptor for.
	assigned uint64
	gens     [maxConns]uint32
	cpu      time.Duration
}

type supervisor struct {
	design   string
	mgr      []byte
	epfd     int
	children []*child
	wake     chan struct{}
	free     chan struct{} // handback: a child is free
	keep     []*os.File
}

func shared(name string, writable bool) (int, []byte, error) {
	fd, err := unix.MemfdCreate(name, unix.MFD_CLOEXEC)
	if err != nil {
		return -1, nil, err
	}
	if err := unix.Ftruncate(fd, 4096); err != nil {
		return -1, nil, err
	}
	b, err := unix.Mmap(fd, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	return fd, b, err
}

func newSupervisor(design string, n int, module string) (*supervisor, error) {
	s := &supervisor{design: design, epfd: -1, wake: make(chan struct{}, 1), free: make(chan struct{}, 1)}
	// Every descriptor given to children is held in one *os.File for
	// the supervisor's life: an os.File's finalizer closes its number,
	// which by then may belong to something else.
	mgrFD, mgr, err := shared("proto-manager", true)
	if err != nil {
		return nil, err
	}
	s.mgr = mgr
	mgrFile := os.NewFile(uintptr(mgrFD), "mgr")
	s.keep = append(s.keep, mgrFile)
	var epFile *os.File
	if design == "direct" {
		if s.epfd, err = unix.EpollCreate1(unix.EPOLL_CLOEXEC); err != nil {
			return nil, err
		}
		epFile = os.NewFile(uintptr(s.epfd), "epoll")
		s.keep = append(s.keep, epFile)
	}
	for i := range n {
		pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return nil, err
		}
		slotFD, slot, err := shared("proto-slot", true)
		if err != nil {
			return nil, err
		}
		cmd := exec.Command("/proc/self/exe", "child", design)
		cmd.Env = append(os.Environ(), "GOMAXPROCS=1", "PROTO_MODULE="+module, "PROTO_INDEX="+strconv.Itoa(i))
		cmd.Stderr = os.Stderr
		ctrlFile, slotFile := os.NewFile(uintptr(pair[1]), "ctrl"), os.NewFile(uintptr(slotFD), "slot")
		files := []*os.File{ctrlFile, mgrFile, slotFile}
		if epFile != nil {
			files = append(files, epFile)
		}
		cmd.ExtraFiles = files
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return nil, err
		}
		_ = ctrlFile.Close()
		_ = slotFile.Close()
		c := &child{pid: cmd.Process.Pid, ctrl: pair[0], slot: slot}
		s.children = append(s.children, c)
		go s.readCtrl(i, c)
	}
	return s, nil
}

func (s *supervisor) stop() {
	for _, c := range s.children {
		_ = unix.Kill(c.pid, unix.SIGKILL)
	}
}

// readCtrl takes the rare messages a child sends: "w" (wake up: a request
// started while you slept, or a child is free while you wait) and, in
// direct, "c"+slot+gen (the web server closed that connection).
func (s *supervisor) readCtrl(i int, c *child) {
	// Through the netpoller: a wake-up costs no thread handoff.
	dup, err := unix.Dup(c.ctrl)
	if err != nil {
		return
	}
	_ = unix.SetNonblock(dup, true)
	f := os.NewFile(uintptr(dup), "ctrl")
	defer f.Close()
	buf := make([]byte, 64)
	for {
		n, err := f.Read(buf)
		if err != nil || n == 0 {
			return
		}
		switch buf[0] {
		case 'w':
			select {
			case s.wake <- struct{}{}:
			default:
			}
		case 'f':
			if s.free != nil {
				select {
				case s.free <- struct{}{}:
				default:
				}
			}
		case 'c':
			if n >= 9 {
				s.closed(int(u32(buf, 1).Load()), u32(buf, 5).Load())
			}
		}
	}
}

// cpuClock reads a child's whole-process CPU clock.
func cpuClock(pid int) time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(int32((^pid)<<3|2), &ts); err != nil {
		return 0
	}
	return time.Duration(ts.Nano())
}

// supervise is the manager's fixed tick: while any request runs, read
// every slot and the busy children's CPU clocks (the product checks the
// limits here); when none runs, sleep until a child says one started.
func (s *supervisor) supervise(ctx context.Context) {
	t := time.NewTicker(tick)
	defer t.Stop()
	sleep := u64(s.mgr, offSleep)
	for ctx.Err() == nil {
		busy := s.scan()
		if !busy {
			sleep.Add(1) // odd: asleep
			if !s.scan() {
				select {
				case <-s.wake:
				case <-ctx.Done():
				}
			}
			sleep.Add(1)
			continue
		}
		select {
		case <-t.C:
		case <-ctx.Done():
		}
	}
}

func (s *supervisor) scan() bool {
	busy := false
	for _, c := range s.children {
		if u32(c.slot, offState).Load() != 0 {
			busy = true
			c.cpu = cpuClock(c.pid)
		}
	}
	return busy
}

func listenUnix(path string) (int, error) {
	_ = os.Remove(path)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		return -1, err
	}
	if err := os.Chmod(path, 0o666); err != nil {
		return -1, err
	}
	return fd, unix.Listen(fd, 1024)
}

func childMain(design string) error {
	ctx := context.Background()
	g, err := newGuest(ctx, os.Getenv("PROTO_MODULE"))
	if err != nil {
		return err
	}
	mgr, err := unix.Mmap(fdMgr, 0, 4096, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map manager page: %w", err)
	}
	slot, err := unix.Mmap(fdSlot, 0, 4096, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map slot: %w", err)
	}
	index, _ := strconv.Atoi(os.Getenv("PROTO_INDEX"))
	k := &kid{g: g, mgr: mgr, slot: slot, index: index}
	if design == "direct" {
		return k.direct(ctx)
	}
	return k.handback(ctx)
}

// kid is the child's side.
type kid struct {
	g         *guest
	mgr, slot []byte
	index     int
	woke      uint64 // the manager's sleep/wait epoch this child last woke
	out       []byte
}

// begin marks the slot busy and wakes a sleeping manager (once per sleep).
func (k *kid) begin(conn int) {
	u32(k.slot, offConn).Store(uint32(conn))
	u32(k.slot, offState).Store(1)
	if e := u64(k.mgr, offSleep).Load(); e&1 == 1 && e != k.woke {
		k.woke = e
		_, _ = unix.Write(fdCtrl, []byte{'w'})
	}
}

func (k *kid) end() {
	u32(k.slot, offState).Store(0)
	u64(k.slot, offDone).Add(1)
}

// rawWait blocks until fd is readable: first without telling the Go
// runtime (cheap when the next request comes soon, as under load), then,
// after 50 ms, in an ordinary poll(2) so an idle child costs nothing.
func rawWait(fd int, events int16) {
	pfd := []unix.PollFd{{Fd: int32(fd), Events: events}}
	r, _, _ := syscall.RawSyscall6(syscall.SYS_POLL, uintptr(unsafe.Pointer(&pfd[0])), 1, 50, 0, 0, 0)
	if r == 1 {
		return
	}
	for {
		if n, err := unix.Poll(pfd, -1); n == 1 || (err != nil && err != unix.EINTR) {
			return
		}
	}
}

func rawRead(fd int, p []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(r), e
}

// writeAll writes p to a socket whose file may be non-blocking (the
// manager's netpoller sets O_NONBLOCK on the shared file description).
func writeAll(fd int, p []byte) error {
	for len(p) > 0 {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			p = p[r:]
		case unix.EAGAIN:
			rawWait(fd, unix.POLLOUT)
		case unix.EINTR:
		default:
			return e
		}
	}
	return nil
}

// sendCtrl sends one control message; the socket is non-blocking (the
// netpoller reads it), so a full buffer waits here.
func sendCtrl(fd int, msg, oob []byte) error {
	for {
		err := unix.Sendmsg(fd, msg, oob, nil, 0)
		if err != unix.EAGAIN {
			return err
		}
		_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, 100)
	}
}
