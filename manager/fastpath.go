package manager

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wagi-fcgi/wagi-fcgi/child"
	"github.com/wagi-fcgi/wagi-fcgi/fcgi"
	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/internal/scoreboard"
	"github.com/wagi-fcgi/wagi-fcgi/manager/internal/runner"
)

// fastTick is how often the manager looks at its children while requests
// run on the fast path: the per-request limits are overshot by at most
// about this much (like cpuPoll on the manager's own path).
const fastTick = 5 * time.Millisecond

// FastPath holds the web server's connections on the fast path
// (RATIONALE.md, "Taking the manager out of the per-request path"): every
// child has a descriptor of each, and the children take requests from
// them through one epoll set, with EPOLLONESHOT. The manager keeps its
// own descriptor of each connection, watches the children on a tick while
// requests run, answers for a child it kills, and takes a connection back
// whenever a request needs it (Handback), serving it from then on through
// the ordinary FastCGI server. It outlives reloads: every generation's
// children join it.
type FastPath struct {
	log  *slog.Logger
	epfd int
	page *scoreboard.Page
	back chan net.Conn
	// waiting counts handovers the FastCGI server has not taken yet;
	// taken is signalled when it takes one. The accept loop waits while
	// maxWaitingHandovers are waiting, so that when the server is slower
	// than the clients (a flood, a loaded machine) connections wait in
	// the kernel's backlog, not as descriptors in the manager.
	waiting     atomic.Int64
	taken       chan struct{}
	maxConns    int
	idleTimeout time.Duration
	base        int // connection c is descriptor base+c here and in every child

	// handed counts connections given back to the FastCGI server and not
	// yet closed or rejoined: they count against maxConns too.
	handed atomic.Int64

	mu    sync.Mutex
	conns []fastConn // by number
	kids  map[int]*fastKid
	idx   map[int]bool // scoreboard numbers of children started, entered or not
	cur   *fastGen     // the newest generation: its routes' budget flags are the page's
	wake  chan struct{}

	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	warnOnce sync.Once
}

type fastConn struct {
	used       bool
	gen        uint32
	opened     time.Time
	lastActive time.Time
	lastFCGIID uint16
	fetched    uint64    // bit i: child i asked for it (holds a copy); children past 63 are told anyway
	readySince time.Time // since when it has been readable and held by no child (while all are busy)
}

// fastKid is one child on the fast path.
type fastKid struct {
	idx  int
	p    *proc
	gen  *fastGen
	slot *scoreboard.Slot
	ctl  int // manager's end of the control socket

	// Touched by the tick (under FastPath.mu).
	seq       uint64
	since     time.Time
	cpuBase   time.Duration
	lastCPU   time.Duration
	lastRoute int
	demoted   bool
	abortAt   time.Time
	held      bool
	lastSnap  scoreboard.Snapshot
	stderr    map[string]*runner.StderrLog // by request id, until its record
}

// NewFastPath makes the fast path's connection table and shared epoll set.
func NewFastPath(log *slog.Logger, maxConns int, idleTimeout time.Duration) (*FastPath, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("fast path: epoll: %w", err)
	}
	page, err := scoreboard.NewPage()
	if err != nil {
		unix.Close(epfd)
		return nil, fmt.Errorf("fast path: %w", err)
	}
	// Connection descriptors go at the top of the descriptor limit.
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &rl); err != nil {
		return nil, fmt.Errorf("fast path: RLIMIT_NOFILE: %w", err)
	}
	limit := int(min(rl.Cur, 1<<20))
	n := min(max(maxConns, 1), scoreboard.MaxConns, limit/4)
	ctx, cancel := context.WithCancel(context.Background())
	f := &FastPath{log: log, epfd: epfd, page: page, back: make(chan net.Conn), taken: make(chan struct{}, 1),
		maxConns: n, base: limit - n, idleTimeout: idleTimeout,
		conns: make([]fastConn, n), kids: map[int]*fastKid{}, idx: map[int]bool{}, wake: make(chan struct{}, 1),
		ctx: ctx, cancel: cancel}
	f.wg.Add(1)
	go f.tick()
	return f, nil
}

// Listener wraps l: connections it accepts join the fast path, and what
// Accept returns are the connections handed back to the manager.
func (f *FastPath) Listener(l net.Listener) net.Listener {
	fl := &fastListener{Listener: l, f: f, errc: make(chan error, 1)}
	f.wg.Add(1)
	go fl.acceptLoop()
	return fl
}

// maxWaitingHandovers bounds the connections accepted and handed to the
// FastCGI server that it has not taken yet (see FastPath.waiting).
const maxWaitingHandovers = 16

type fastListener struct {
	net.Listener
	f    *FastPath
	errc chan error
}

func (l *fastListener) acceptLoop() {
	defer l.f.wg.Done()
	for {
		for l.f.waiting.Load() >= maxWaitingHandovers {
			select {
			case <-l.f.taken:
			case <-l.f.ctx.Done():
				select {
				case l.errc <- net.ErrClosed:
				default:
				}
				return
			}
		}
		c, err := l.Listener.Accept()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(5 * time.Millisecond)
				continue
			}
			l.errc <- err
			return
		}
		l.f.add(c)
	}
}

func (l *fastListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.f.back:
		return c, nil
	case err := <-l.errc:
		l.errc <- err
		return nil, err
	}
}

// Close stops the fast path's accepting too.
func (l *fastListener) Close() error { return l.Listener.Close() }

// Close stops the tick and closes every connection.
func (f *FastPath) Close() {
	f.cancel()
	f.wg.Wait()
	f.mu.Lock()
	defer f.mu.Unlock()
	for c := range f.conns {
		if f.conns[c].used {
			f.dropLocked(c)
		}
	}
}

// childFlag is the child's --fast argument.
func (fs fastStart) childFlag(base int) string {
	return fmt.Sprintf("4,5,6,7,%d,%d", fs.idx, base)
}

// add registers a new connection: a descriptor at ConnBase+c for the
// manager, one for every child, then the shared epoll set.
func (f *FastPath) add(nc net.Conn) {
	sc, ok := nc.(syscall.Conn)
	if !ok {
		f.back <- nc
		return
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		nc.Close()
		return
	}
	dupFD := -1
	_ = raw.Control(func(fd uintptr) { dupFD, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3) })
	nc.Close()
	if err != nil || dupFD < 0 {
		return
	}
	f.addFD(dupFD)
}

// addFD registers a connection by a descriptor it then owns.
func (f *FastPath) addFD(dupFD int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	now := time.Now()
	c, used := -1, 0
	for i := range f.conns {
		if f.conns[i].used {
			used++
		} else if c < 0 {
			c = i
		}
	}
	if c < 0 || used+int(f.handed.Load()) >= f.maxConns {
		// Full: the connection idle the longest makes room, as nginx
		// does with its kept-alive connections.
		if old := f.oldestIdleLocked(); old >= 0 {
			f.dropLocked(old)
			c = old
		} else {
			// Every connection is busy or handed back: the FastCGI
			// server decides, with its own rules for a full house
			// (it closes the one stalled the longest).
			f.handOverLocked(dupFD, nil)
			return true
		}
	}
	fd := f.base + c
	if err := unix.Dup3(dupFD, fd, unix.O_CLOEXEC); err != nil {
		// The descriptor limit was lowered under us (prlimit): this
		// connection is served the manager's way.
		f.warnOnce.Do(func() {
			f.log.Warn("fast path: connection descriptors no longer fit RLIMIT_NOFILE; new connections take the manager's path", "err", err)
		})
		f.handOverLocked(dupFD, nil)
		return true
	}
	unix.Close(dupFD)
	fc := &f.conns[c]
	fc.used, fc.opened, fc.lastActive, fc.readySince = true, now, now, time.Time{}
	fc.gen++
	// Children ask for its descriptor when they first take one of its
	// events (child.CtlQuery).
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(fd), Pad: int32(fc.gen)}
	if err := unix.EpollCtl(f.epfd, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
		f.log.Error("fast path: epoll add", "err", err)
		f.dropLocked(c)
		return false
	}
	return true
}

func (f *FastPath) oldestIdleLocked() int {
	held := f.heldLocked()
	var pfds []unix.PollFd
	now := time.Now()
	for i := range f.conns {
		// A connection active within the last second may have a request
		// on its way: a child's handback in flight, or bytes nginx is
		// still sending. It is not taken.
		if f.conns[i].used && !held[i] && now.Sub(f.conns[i].lastActive) >= time.Second {
			pfds = append(pfds, unix.PollFd{Fd: int32(f.base + i), Events: unix.POLLIN})
		}
	}
	_, _ = unix.Poll(pfds, 0) // one call for all of them
	best, bestReady := -1, -1
	for _, p := range pfds {
		i := int(p.Fd) - f.base
		if p.Revents&unix.POLLIN != 0 && p.Revents&(unix.POLLHUP|unix.POLLRDHUP) == 0 {
			// A request waits on it: the last to go.
			if bestReady < 0 || f.conns[i].lastActive.Before(f.conns[bestReady].lastActive) {
				bestReady = i
			}
			continue
		}
		if best < 0 || f.conns[i].lastActive.Before(f.conns[best].lastActive) {
			best = i
		}
	}
	if best < 0 {
		return bestReady
	}
	return best
}

// heldLocked is the set of connections a child says it holds.
func (f *FastPath) heldLocked() map[int]bool {
	held := map[int]bool{}
	for _, k := range f.kids {
		if s := k.slot.Read(); s.State == scoreboard.Holding || s.State == scoreboard.Running {
			if s.Conn >= 0 {
				held[s.Conn] = true
			}
		}
	}
	return held
}

// answerQuery sends a child connection c's descriptor, or says it is gone.
func (f *FastPath) answerQuery(k *fastKid, c int, gen uint32) {
	var msg [9]byte
	binary.LittleEndian.PutUint32(msg[1:], uint32(c))
	binary.LittleEndian.PutUint32(msg[5:], gen)
	f.mu.Lock()
	live := c >= 0 && c < len(f.conns) && f.conns[c].used && f.conns[c].gen == gen
	var oob []byte
	if live {
		msg[0] = child.CtlConn
		oob = unix.UnixRights(f.base + c)
	} else {
		msg[0] = child.CtlGone
	}
	// Under the lock: the descriptor cannot be closed meanwhile. The
	// child waits for this answer, so its socket has room; one that does
	// not read it is stuck and killed.
	err := unix.Sendmsg(k.ctl, msg[:], oob, nil, unix.MSG_DONTWAIT)
	if live && err == nil {
		f.conns[c].fetched |= 1 << min(k.idx, 63)
	}
	f.mu.Unlock()
	if err != nil {
		f.log.Warn("fast path: a child does not read its control socket; killing it", "pid", k.p.pid, "err", err)
		k.p.kill(killIPC)
	}
}

// dropLocked closes connection c: shut down (the children's copies would
// keep it open otherwise) and forgotten.
func (f *FastPath) dropLocked(c int) {
	fd := f.base + c
	_ = unix.EpollCtl(f.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	_ = unix.Shutdown(fd, unix.SHUT_RDWR)
	_ = unix.Close(fd)
	f.forgetLocked(c)
}

// forgetLocked takes connection c off the table and tells the children
// holding a copy to close it: the socket is closed only when the last
// descriptor of it is. A child too busy to read the notice keeps its
// copy until the number is reused.
func (f *FastPath) forgetLocked(c int) {
	fc := &f.conns[c]
	var msg [9]byte
	msg[0] = child.CtlGone
	binary.LittleEndian.PutUint32(msg[1:], uint32(c))
	binary.LittleEndian.PutUint32(msg[5:], fc.gen)
	for _, k := range f.kids {
		if fc.fetched&(1<<min(k.idx, 63)) != 0 {
			_ = unix.Sendmsg(k.ctl, msg[:], nil, nil, unix.MSG_DONTWAIT)
		}
	}
	fc.used, fc.fetched = false, 0
}

// handbackLocked takes connection c off the fast path and gives it to the
// FastCGI server, with the bytes a child already read of it.
func (f *FastPath) handbackLocked(c int, prefix []byte) {
	fd := f.base + c
	_ = unix.EpollCtl(f.epfd, unix.EPOLL_CTL_DEL, fd, nil)
	nfd, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		f.dropLocked(c)
		return
	}
	_ = unix.Close(fd)
	f.forgetLocked(c)
	f.handOverLocked(nfd, prefix)
}

// handOverLocked gives the connection on descriptor fd (which it takes)
// to the FastCGI server, with the bytes already read of it.
func (f *FastPath) handOverLocked(fd int, prefix []byte) {
	file := os.NewFile(uintptr(fd), "fastcgi")
	nc, err := net.FileConn(file)
	file.Close()
	if err != nil {
		return
	}
	f.handed.Add(1)
	conn := &handedConn{Conn: nc, f: f, prefix: append([]byte(nil), prefix...)}
	f.waiting.Add(1)
	go func() {
		select {
		case f.back <- conn:
		case <-f.ctx.Done():
			conn.Close()
		}
		f.waiting.Add(-1)
		select {
		case f.taken <- struct{}{}:
		default:
		}
	}()
}

// handedConn is a connection the fast path gave back to the FastCGI
// server: the bytes a child read come first; once the server has answered
// (an END_REQUEST went out) and nothing more waits on the connection, it
// rejoins the fast path (the server's read sees EOF; a request that
// arrives first keeps it with the server until its end), so connections do
// not drift away from the fast path. Closing it shuts the socket down,
// since children may still hold copies of its descriptor.
type handedConn struct {
	net.Conn
	f      *FastPath
	prefix []byte

	mu        sync.Mutex
	in        recordScanner // the records the web server sent
	out       recordScanner // the records the server wrote
	returning bool          // an END_REQUEST went out: rejoin once between requests and idle
	forced    bool          // the read deadline is ours (to check that), not the server's
	deadline  time.Time     // the server's own read deadline
	rejoined  bool
	closed    bool
}

func (h *handedConn) Read(p []byte) (int, error) {
	if len(h.prefix) > 0 {
		n := copy(p, h.prefix)
		h.prefix = h.prefix[n:]
		h.mu.Lock()
		h.in.scan(p[:n])
		h.mu.Unlock()
		return n, nil
	}
	for {
		n, err := h.Conn.Read(p)
		if n > 0 {
			h.mu.Lock()
			h.in.scan(p[:n])
			if h.returning && h.between() {
				h.forced = true
				_ = h.Conn.SetReadDeadline(time.Unix(1, 0)) // check now
			}
			h.mu.Unlock()
		}
		if err == nil || !errors.Is(err, os.ErrDeadlineExceeded) {
			return n, err
		}
		h.mu.Lock()
		if !h.forced || h.closed {
			// The server's own deadline: its timeout is the server's.
			h.mu.Unlock()
			return n, err
		}
		h.forced = false
		if h.between() {
			h.returning = false
			if h.idle() && h.f.rejoin(h.Conn) {
				h.rejoined = true
				h.f.handed.Add(-1)
				h.mu.Unlock()
				return 0, io.EOF
			}
		}
		d := h.deadline
		h.mu.Unlock()
		_ = h.Conn.SetReadDeadline(d)
		if n > 0 {
			return n, nil
		}
	}
}

// between reports whether every request begun on the connection has had
// its input end and its END_REQUEST written.
func (h *handedConn) between() bool {
	return h.in.begins == h.in.stdinEnds && h.in.begins == h.out.ends && h.in.hdrN == 0 && h.in.skip == 0
}

// idle reports whether nothing is waiting to be read.
func (h *handedConn) idle() bool {
	sc, ok := h.Conn.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	n := -1
	_ = raw.Control(func(fd uintptr) { n, _ = unix.IoctlGetInt(int(fd), unix.SIOCINQ) })
	return n == 0
}

func (h *handedConn) Write(p []byte) (int, error) {
	n, err := h.Conn.Write(p)
	h.mu.Lock()
	if h.out.scan(p[:n]) > 0 && !h.closed {
		h.returning = true
		if h.between() {
			h.forced = true
			_ = h.Conn.SetReadDeadline(time.Unix(1, 0)) // end the server's wait now
		}
	}
	h.mu.Unlock()
	return n, err
}

func (h *handedConn) SetReadDeadline(t time.Time) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.deadline = t
	if h.forced {
		return nil // the check for rejoining comes first
	}
	return h.Conn.SetReadDeadline(t)
}

func (h *handedConn) SetDeadline(t time.Time) error {
	if err := h.SetReadDeadline(t); err != nil {
		return err
	}
	return h.Conn.SetWriteDeadline(t)
}

func (h *handedConn) Close() error {
	h.mu.Lock()
	first := !h.closed
	h.closed = true
	rejoined := h.rejoined
	h.mu.Unlock()
	if first && !rejoined {
		h.f.handed.Add(-1)
	}
	if !rejoined {
		if sc, ok := h.Conn.(syscall.Conn); ok {
			if raw, err := sc.SyscallConn(); err == nil {
				_ = raw.Control(func(fd uintptr) { _ = unix.Shutdown(int(fd), unix.SHUT_RDWR) })
			}
		}
	}
	return h.Conn.Close()
}

// recordScanner follows the FastCGI records of a byte stream across
// reads or writes, and counts the BEGIN_REQUESTs, the empty STDIN records
// that end a request's input, and the END_REQUESTs.
type recordScanner struct {
	hdr                     [8]byte
	hdrN                    int
	skip                    int
	begins, stdinEnds, ends int
}

func (r *recordScanner) scan(p []byte) (ends int) {
	for len(p) > 0 {
		if r.skip > 0 {
			k := min(r.skip, len(p))
			r.skip -= k
			p = p[k:]
			continue
		}
		k := copy(r.hdr[r.hdrN:], p)
		r.hdrN += k
		p = p[k:]
		if r.hdrN < 8 {
			return ends
		}
		r.hdrN = 0
		n := int(binary.BigEndian.Uint16(r.hdr[4:6]))
		switch r.hdr[1] {
		case 1: // BEGIN_REQUEST
			r.begins++
		case 3: // END_REQUEST
			ends++
			r.ends++
		case 5: // STDIN
			if n == 0 {
				r.stdinEnds++
			}
		}
		r.skip = n + int(r.hdr[6])
	}
	return ends
}

// rejoin puts a connection the server has finished with back on the fast
// path (the caller then closes its own descriptor).
func (f *FastPath) rejoin(nc net.Conn) bool {
	if f.ctx.Err() != nil {
		return false
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return false
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	dupFD := -1
	_ = raw.Control(func(fd uintptr) { dupFD, err = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 3) })
	if err != nil || dupFD < 0 {
		return false
	}
	return f.addFD(dupFD)
}

// fastGen is one generation's side of the fast path: its route table as
// sent to its children (fixed for the generation, so route numbers mean
// the same thing to both sides) and what a finished request does.
type fastGen struct {
	f       *FastPath
	m       *Manager
	routes  *ipc.Routes
	targets []*target
}

// newFastGen builds the routes a generation's children may answer alone.
func (m *Manager) newFastGen(f *FastPath) *fastGen {
	g := &fastGen{f: f, m: m, routes: &ipc.Routes{ServerSoftware: m.software, IDPrefix: m.idPrefix + "f"}}
	if m.cfg.StatusPath != "" {
		g.routes.Reserved = append(g.routes.Reserved, m.cfg.StatusPath)
	}
	if m.cfg.Healthz {
		g.routes.Reserved = append(g.routes.Reserved, "/healthz")
	}
	if m.gateway != nil {
		g.routes.ReservedPrefix = m.gateway.prefix
	}
	for _, t := range m.routes.Load().All() {
		r := ipc.Route{Pattern: t.route.Pattern}
		mod, _ := t.src.loaded()
		if mod != nil && len(t.cfg.Volumes) == 0 && len(t.cfg.AllowedHosts) == 0 && t.slots == nil && missingEntrypoint(t, mod) == "" {
			env := make([]string, 0, len(t.cfg.Environment))
			for k, v := range t.cfg.Environment {
				env = append(env, k+"="+v)
			}
			r = ipc.Route{Pattern: t.route.Pattern, Fast: true, ModuleKey: mod.key, ModulePath: mod.binary(),
				MemoryPages: t.pages, Entrypoint: t.entry, ArgvTemplate: t.cfg.Argv, Env: env,
				MaxBody: t.limits.MaxBody, MaxOutput: t.limits.MaxOutput, StderrCap: stderrCap}
		}
		g.routes.Routes = append(g.routes.Routes, r)
		g.targets = append(g.targets, t)
		if len(g.targets) == scoreboard.MaxRoutes {
			break
		}
	}
	return g
}

// enter puts a started child on the fast path: the connections, then its
// routes. It reports false if the child failed at it (it is killed).
func (g *fastGen) enter(p *proc, ctl int, slot *scoreboard.Slot, idx int) bool {
	f := g.f
	k := &fastKid{idx: idx, p: p, gen: g, slot: slot, ctl: ctl, lastRoute: -1, lastCPU: p.cpu(), stderr: map[string]*runner.StderrLog{}}
	f.mu.Lock()
	if f.cur != g {
		f.cur = g
		g.refreshSpent(time.Now())
	}
	f.kids[idx] = k
	p.fast = k
	f.mu.Unlock()
	if err := p.w.WriteFrame(ipc.TypeRoutes, ipc.AppendRoutes(nil, g.routes)); err != nil {
		p.kill(killIPC)
		return false
	}
	if err := p.w.Flush(); err != nil {
		p.kill(killIPC)
		return false
	}
	t, payload, err := p.recv(context.Background(), time.Now().Add(10*time.Second))
	var d ipc.Done
	if err != nil || t != ipc.TypeDone || ipc.DecodeDone(payload, &d) != nil || d.Outcome != ipc.OutcomeOK {
		g.m.log.Error("child did not take the fast path's routes", "pid", p.pid, "err", err)
		p.kill(killIPC)
		return false
	}
	f.wg.Add(1)
	go f.readCtl(k)
	f.poke()
	return true
}

// poke wakes the tick.
func (f *FastPath) poke() {
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// readCtl takes a child's control messages: closed connections,
// handbacks, wake-ups and guest stderr. All of it is bounded and checked:
// the child is hostile.
func (f *FastPath) readCtl(k *fastKid) {
	defer f.wg.Done()
	buf := make([]byte, 128<<10)
	for {
		n, err := unix.Read(k.ctl, buf)
		if err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return
		}
		if n < 9 {
			continue
		}
		c, gen := int(binary.LittleEndian.Uint32(buf[1:])), binary.LittleEndian.Uint32(buf[5:])
		switch buf[0] {
		case child.CtlWake:
			f.poke()
		case child.CtlQuery:
			f.answerQuery(k, c, gen)
		case child.CtlClosed, child.CtlHandback:
			if c < 0 || c >= len(f.conns) {
				continue
			}
			f.mu.Lock()
			if fc := &f.conns[c]; fc.used && fc.gen == gen {
				if buf[0] == child.CtlClosed {
					f.dropLocked(c)
				} else {
					f.handbackLocked(c, buf[9:n])
				}
			}
			f.mu.Unlock()
		case child.CtlFailed:
			id, text, ok := cutByte(buf[9:n], 0)
			if ok && k.gen.ownID(string(id)) {
				k.gen.failed(string(id), int(gen), string(text[:min(len(text), 4096)]))
			}
		case child.CtlStderr:
			id, text, ok := cutByte(buf[9:n], 0)
			if ok && k.gen.ownID(string(id)) {
				f.mu.Lock()
				k.gen.fastStderr(k, string(id), int(gen), text)
				f.mu.Unlock()
			}
		}
	}
}

func cutByte(b []byte, sep byte) ([]byte, []byte, bool) {
	for i, x := range b {
		if x == sep {
			return b[:i], b[i+1:], true
		}
	}
	return nil, nil, false
}

// borrow takes a child off the fast path for the manager's own dispatch:
// it waits until the child has finished the request it may be running.
func (f *FastPath) borrow(p *proc, timeout time.Duration) error {
	k := p.fast
	if err := p.w.WriteFrame(ipc.TypeBorrow, nil); err != nil {
		return err
	}
	if err := p.w.Flush(); err != nil {
		return err
	}
	t, _, err := p.recv(context.Background(), time.Now().Add(timeout))
	if err != nil {
		return err
	}
	if t != ipc.TypeHeld {
		return fmt.Errorf("child answered %s to borrow", t)
	}
	f.mu.Lock()
	f.chargeLocked(k, time.Now())
	k.held = true
	f.mu.Unlock()
	return nil
}

// unborrow hands the child back to the fast path after its run; its CPU
// until now was the holder's to charge.
func (f *FastPath) unborrow(p *proc) {
	k := p.fast
	f.mu.Lock()
	k.held = false
	k.lastCPU = p.cpu()
	f.mu.Unlock()
}

// leave is called when a child has exited: if it died on a request from
// a connection, the manager answers that request for it (or cuts the
// stream it had begun) and gives the connection to the other children.
func (f *FastPath) leave(p *proc) {
	k := p.fast
	if k == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.kids, k.idx)
	delete(f.idx, k.idx)
	for id := range k.stderr {
		k.endStderr(id)
	}
	_ = unix.Close(k.ctl)
	s := k.slot.Read()
	defer k.slot.Close()
	// It may have died between taking a connection's event and saying so
	// in its slot: that connection is armed for no one. Re-arm every
	// connection no child holds (harmless for the armed ones).
	defer f.rearmUnheldLocked()
	if s.State != scoreboard.Running && s.State != scoreboard.Holding {
		return
	}
	c := s.Conn
	if c < 0 || c >= len(f.conns) || !f.conns[c].used || f.conns[c].gen != s.Gen {
		return
	}
	reason := p.killReason()
	// What it used since the last tick is its request's.
	f.chargeLocked(k, time.Now())
	if s.State == scoreboard.Holding {
		// It died reading the request (no guest code ran yet).
		switch pending := f.pending(c); {
		case !s.Read:
			return // nothing read: the request waits for another child (rearm)
		case pending > 0:
			// Part of a request may be gone: the stream cannot be
			// trusted any more.
			f.dropLocked(c)
			return
		}
	}
	if s.Answered {
		// Killed after its whole answer went out: the connection is
		// fine (rearmUnheldLocked gives it back to the children).
		return
	}
	if s.Committed || reason == killAbort {
		f.dropLocked(c)
		status := 499
		if s.Committed {
			status = 200
		}
		k.gen.died(k, s, s.ID, status, reason)
		return
	}
	fl := fail(workerFailed)
	if kind, ok := killFailures[reason]; ok {
		fl = fail(kind)
	}
	if fl.kind == budgetSpent {
		if t := k.gen.target(s.Route); t != nil {
			now := time.Now()
			a, _ := k.gen.m.budgets.exhausted(k.gen.m.chargeTo(t.modKey(), t.limits, false, now))
			fl = budgetFailure(a, now)
		}
	}
	id := s.ID
	if id == "" || s.State == scoreboard.Holding {
		id = k.gen.m.newID()
	}
	fcgiID := s.FCGIID
	if s.State == scoreboard.Holding {
		fcgiID = f.conns[c].lastFCGIID
	}
	if fcgiID == 0 {
		fcgiID = 1
	}
	var out bytes.Buffer
	fl.write(&out, id)
	resp := fcgi.AppendResponse(nil, fcgiID, out.Bytes())
	status := fl.status()
	fd := f.base + c
	if err := writeFull(fd, resp); err != nil {
		f.dropLocked(c)
		return
	}
	k.gen.died(k, s, id, status, reason)
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(fd), Pad: int32(f.conns[c].gen)}
	_ = unix.EpollCtl(f.epfd, unix.EPOLL_CTL_MOD, fd, &ev)
}

// pending is how many bytes wait to be read on connection c.
func (f *FastPath) pending(c int) int {
	n, err := unix.IoctlGetInt(f.base+c, unix.SIOCINQ)
	if err != nil {
		return -1
	}
	return n
}

// rearmUnheldLocked re-arms every connection no child holds, with the
// handshake of takeoverLocked, so that a child between taking an event
// and saying so never shares a connection.
func (f *FastPath) rearmUnheldLocked() {
	held := f.heldLocked()
	for c := range f.conns {
		fc := &f.conns[c]
		if !fc.used || held[c] {
			continue
		}
		f.page.SetTaking(c, true)
		if !f.heldLocked()[c] {
			ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(f.base + c), Pad: int32(fc.gen)}
			_ = unix.EpollCtl(f.epfd, unix.EPOLL_CTL_MOD, f.base+c, &ev)
		}
		f.page.SetTaking(c, false)
	}
}

func writeFull(fd int, p []byte) error {
	deadline := time.Now().Add(5 * time.Second)
	for len(p) > 0 {
		n, err := unix.Write(fd, p)
		switch {
		case err == unix.EINTR:
		case err == unix.EAGAIN:
			if time.Now().After(deadline) {
				return err
			}
			_, _ = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}, 100)
		case err != nil:
			return err
		default:
			p = p[n:]
		}
	}
	return nil
}

// fastStart is what a child starting on the fast path is given.
type fastStart struct {
	ctl      int      // the manager's end of the control socket; 0 without a fast path
	ctlChild *os.File // the child's end
	epoll    *os.File // a descriptor of the shared set, for the child
	page     *os.File
	slot     *scoreboard.Slot
	idx      int
}

// prepare makes what one child needs to start on the fast path.
func (f *FastPath) prepare() (fastStart, error) {
	var fs fastStart
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fs, fmt.Errorf("fast path: socketpair: %w", err)
	}
	ep, err := unix.FcntlInt(uintptr(f.epfd), unix.F_DUPFD_CLOEXEC, 3)
	if err != nil {
		unix.Close(pair[0])
		unix.Close(pair[1])
		return fs, fmt.Errorf("fast path: dup: %w", err)
	}
	slot, err := scoreboard.NewSlot()
	if err != nil {
		unix.Close(pair[0])
		unix.Close(pair[1])
		unix.Close(ep)
		return fs, err
	}
	f.mu.Lock()
	idx := -1
	for i := 0; i < scoreboard.MaxChildren; i++ {
		if !f.idx[i] {
			idx = i
			f.idx[i] = true
			break
		}
	}
	f.mu.Unlock()
	if idx < 0 {
		unix.Close(pair[0])
		unix.Close(pair[1])
		unix.Close(ep)
		slot.Close()
		return fs, errors.New("fast path: too many children")
	}
	return fastStart{ctl: pair[0], ctlChild: os.NewFile(uintptr(pair[1]), "fast-ctl"), epoll: os.NewFile(uintptr(ep), "fast-epoll"),
		page: f.page.File, slot: slot, idx: idx}, nil
}

// closeChildEnds closes what only the child needed, once it has started.
func (fs fastStart) closeChildEnds() {
	if fs.ctlChild != nil {
		fs.ctlChild.Close()
		fs.epoll.Close()
	}
}

// abandon undoes prepare for a child that did not start.
func (fs fastStart) abandon(f *FastPath) {
	if fs.slot == nil {
		return
	}
	unix.Close(fs.ctl)
	fs.slot.Close()
	f.mu.Lock()
	delete(f.idx, fs.idx)
	f.mu.Unlock()
}

// isHeld reports whether the child is borrowed.
func (k *fastKid) isHeld() bool {
	k.gen.f.mu.Lock()
	defer k.gen.f.mu.Unlock()
	return k.held
}

// busy counts the children among procs running a request from a
// connection (not borrowed).
func (f *FastPath) busy(procs []*proc) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	n := 0
	for _, p := range procs {
		if k := p.fast; k != nil && !k.held {
			if st := k.slot.Read().State; st == scoreboard.Running || st == scoreboard.Holding {
				n++
			}
		}
	}
	return n
}

// ownID reports whether id is a request id this generation's children
// make (ipc.Routes.IDPrefix): what a child says about other ids is not
// logged.
func (g *fastGen) ownID(id string) bool {
	return scoreboard.ValidID(id) && strings.HasPrefix(id, g.routes.IDPrefix+"-")
}
