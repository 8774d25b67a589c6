package child

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/wagi-fcgi/wagi-fcgi/fcgi"
	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/internal/scoreboard"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wasmhost"
)

// FastFDs are the descriptors of the fast path (manager/RATIONALE.md,
// "Taking the manager out of the per-request path"), inherited from the
// manager.
type FastFDs struct {
	Ctl    int // control socket: connection descriptors in, handbacks out
	Shared int // the epoll set every child takes connections from
	Page   int // the manager's scoreboard page (mapped read-only)
	Slot   int // this child's scoreboard slot
	Index  int // this child's number in the page's counters
	// Base is where connection descriptors live in the manager and in
	// every child: a child re-arms the manager's registration in the
	// shared epoll set, which epoll keys by file and descriptor number,
	// so the numbers must be the same. Connection c is descriptor
	// Base+c, at the top of the descriptor limit, above anything else
	// either side opens.
	Base int
}

// Control messages on the fast path's socket (SOCK_SEQPACKET, one per
// datagram): kind byte, connection uint32, generation uint32, payload.
const (
	CtlConn     = 'n' // manager → child: connection c of generation g (descriptor attached)
	CtlGone     = 'x' // manager → child: connection c of generation g is no longer the fast path's
	CtlQuery    = 'q' // child → manager: send me connection c of generation g
	CtlClosed   = 'c' // child → manager: c is closed, or must be (not kept alive)
	CtlHandback = 'h' // child → manager: answer c's request; payload: the bytes read
	CtlWake     = 'w' // child → manager: a request began while the tick slept
	CtlStderr   = 'e' // child → manager: guest stderr of a fast request; payload: id NUL bytes
	CtlFailed   = 'f' // child → manager: why a fast request's module failed; payload: id NUL message
	ctlHeader   = 9
)

// fastMaxRequest bounds what a child reads of one request before it gives
// the connection to the manager (with what it read: the manager's memory
// for those is at most this per connection), and fastCommit how much
// output it holds before it sends the headers (as the manager does: a
// failure before it is still a clean 5xx). nginx's requests for a page
// are a few KiB.
const (
	fastMaxRequest = 16 << 10
	fastCommit     = 64 << 10
)

type fastPath struct {
	e      *engine
	fds    FastFDs
	own    int // this child's epoll: the IPC socket and the shared set
	ipcFD  int
	view   *scoreboard.View
	slot   *scoreboard.Slot
	gens   []uint32
	routes *ipc.Routes
	table  *wagi.Table[int]
	woke   uint64
	seq    uint64
	buf    []byte
	resp   []byte
	stdout fastOut
	stderr fastErr
	http   map[string]bool // by module key: does it import outbound HTTP?
}

func newFastPath(e *engine, fds FastFDs, ipcFD int) (*fastPath, error) {
	view, err := scoreboard.MapView(fds.Page)
	if err != nil {
		return nil, err
	}
	slot, err := scoreboard.MapSlot(fds.Slot)
	if err != nil {
		return nil, err
	}
	own, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("epoll: %w", err)
	}
	for _, fd := range []int{ipcFD, fds.Shared, fds.Ctl} {
		ev := unix.EpollEvent{Events: unix.EPOLLIN, Fd: int32(fd)}
		if err := unix.EpollCtl(own, unix.EPOLL_CTL_ADD, fd, &ev); err != nil {
			return nil, fmt.Errorf("epoll add %d: %w", fd, err)
		}
	}
	return &fastPath{e: e, fds: fds, own: own, ipcFD: ipcFD, view: view, slot: slot,
		gens: make([]uint32, scoreboard.MaxConns), buf: make([]byte, 0, 16<<10), http: map[string]bool{}}, nil
}

func (f *fastPath) setRoutes(r *ipc.Routes) {
	t := &wagi.Table[int]{}
	for i, rt := range r.Routes {
		if route, err := wagi.ParseRoute(rt.Pattern); err == nil {
			t.Add(route, i)
		}
	}
	f.routes, f.table = r, t
}

// waitIPC answers requests from connections until the manager's IPC
// socket has something to read.
func (f *fastPath) waitIPC(ctx context.Context) error {
	events := make([]unix.EpollEvent, 3)
	for ctx.Err() == nil {
		n := f.wait(events)
		shared := false
		for _, ev := range events[:n] {
			switch int(ev.Fd) {
			case f.ipcFD:
				return nil
			case f.fds.Ctl:
				f.drainCtl()
			default:
				shared = true
			}
		}
		if shared && f.routes != nil {
			var one [1]unix.EpollEvent
			r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_WAIT, uintptr(f.fds.Shared), uintptr(unsafe.Pointer(&one[0])), 1, 0, 0, 0)
			if e == 0 && r == 1 {
				f.serve(ctx, int(one[0].Fd), uint32(one[0].Pad))
			}
		}
	}
	return ctx.Err()
}

// wait blocks on the child's own epoll: first without telling the Go
// runtime (one thread wakes per request, see rawfd.go), after rawWait in
// an ordinary call, so an idle child costs nothing.
func (f *fastPath) wait(events []unix.EpollEvent) int {
	ms := int(rawWait / time.Millisecond)
	r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_WAIT, uintptr(f.own), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(ms), 0, 0)
	if e == 0 && r > 0 {
		return int(r)
	}
	for {
		n, err := unix.EpollWait(f.own, events, -1)
		if n > 0 {
			return n
		}
		if err != nil && err != unix.EINTR {
			return 0
		}
	}
}

// fetch gets connection c of generation gen from the manager, the first
// time this child takes an event of it: one round trip per child and
// connection (not per request), and no descriptors sent to children that
// never need them. It reports false if the connection is gone.
func (f *fastPath) fetch(c int, gen uint32) bool {
	f.sendCtl(CtlQuery, c, gen, nil)
	for {
		kind, rc, rgen, ok := f.recvCtl()
		if !ok {
			return false
		}
		if rc == c && rgen == gen {
			return kind == CtlConn
		}
	}
}

// drainCtl takes the manager's notices that connections left the fast
// path (their copies here are closed, so the manager's close reaches the
// web server).
func (f *fastPath) drainCtl() {
	for {
		if _, _, _, ok := f.recvCtlFlags(unix.MSG_DONTWAIT); !ok {
			return
		}
	}
}

// recvCtl takes one message from the manager, installing the descriptor
// it carries, or closing the one a CtlGone names.
func (f *fastPath) recvCtl() (kind byte, c int, gen uint32, ok bool) {
	return f.recvCtlFlags(0)
}

func (f *fastPath) recvCtlFlags(flags int) (kind byte, c int, gen uint32, ok bool) {
	var b [ctlHeader]byte
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := unix.Recvmsg(f.fds.Ctl, b[:], oob, flags)
	for err == unix.EINTR {
		n, oobn, _, _, err = unix.Recvmsg(f.fds.Ctl, b[:], oob, flags)
	}
	if err != nil || n < ctlHeader {
		return 0, 0, 0, false
	}
	fd := -1
	if msgs, _ := unix.ParseSocketControlMessage(oob[:oobn]); len(msgs) == 1 {
		if got, _ := unix.ParseUnixRights(&msgs[0]); len(got) >= 1 {
			fd = got[0]
			for _, x := range got[1:] {
				_ = unix.Close(x)
			}
		}
	}
	kind, c, gen = b[0], int(binary.LittleEndian.Uint32(b[1:])), binary.LittleEndian.Uint32(b[5:])
	if c < 0 || c >= scoreboard.MaxConns || (kind == CtlConn && fd < 0) {
		if fd >= 0 {
			_ = unix.Close(fd)
		}
		return 0, -1, 0, true
	}
	switch {
	case kind == CtlConn:
		_ = unix.Dup3(fd, f.fds.Base+c, unix.O_CLOEXEC)
		_ = unix.Close(fd)
		f.gens[c] = gen
	case kind == CtlGone && f.gens[c] == gen && gen != 0:
		_ = unix.Close(f.fds.Base + c)
		f.gens[c] = 0
	}
	if kind != CtlConn && fd >= 0 {
		_ = unix.Close(fd)
	}
	return kind, c, gen, true
}

func (f *fastPath) sendCtl(kind byte, c int, gen uint32, payload []byte) {
	msg := make([]byte, ctlHeader, ctlHeader+len(payload))
	msg[0] = kind
	binary.LittleEndian.PutUint32(msg[1:], uint32(c))
	binary.LittleEndian.PutUint32(msg[5:], gen)
	msg = append(msg, payload...)
	for {
		_, err := unix.Write(f.fds.Ctl, msg)
		if err != unix.EINTR {
			return
		}
	}
}

// serve answers the request waiting on connection descriptor fd, or hands
// it to the manager.
func (f *fastPath) serve(ctx context.Context, fd int, gen uint32) {
	c := fd - f.fds.Base
	if c < 0 || c >= scoreboard.MaxConns {
		return
	}
	if !f.slot.Hold(c, gen, f.view) {
		// The manager is taking the connection over (it waited too long):
		// let it go untouched; the manager answers it.
		f.slot.Release()
		return
	}
	if f.gens[c] != gen && !f.fetch(c, gen) {
		f.slot.Release()
		return // closed or taken back meanwhile
	}
	closed := f.read(fd)
	if closed {
		f.slot.Release()
		f.sendCtl(CtlClosed, c, gen, nil)
		return
	}
	req, ok := fcgi.ParseWhole(f.buf, fastMaxRequest, fastMaxRequest)
	var ri int
	var rt *ipc.Route
	var scriptName, rawPathInfo string
	rawPath := ""
	if ok {
		rawPath = wagi.RawPath(req.Params)
		ok = !f.reserved(rawPath)
	}
	if ok {
		ri, scriptName, rawPathInfo, _, ok = f.table.Lookup(rawPath)
	}
	if ok {
		rt = &f.routes.Routes[ri]
		cl, _ := strconv.ParseInt(req.Params["CONTENT_LENGTH"], 10, 64)
		ok = rt.Fast && !f.view.Spent(ri) && int64(len(req.Body)) <= rt.MaxBody && (cl <= 0 || cl == int64(len(req.Body)))
	}
	if ok && f.needsManager(ctx, rt) {
		ok = false
	}
	if !ok {
		// Send first, release after: while the message is on its way
		// the connection is still this child's (the manager does not
		// evict a held connection).
		f.sendCtl(CtlHandback, c, gen, f.buf)
		f.slot.Release()
		return
	}
	f.seq++
	id := f.routes.IDPrefix + "-" + strconv.FormatUint(f.seq, 36)
	start := time.Now()
	cpu0 := selfCPU()
	f.slot.Begin(req.ID, ri, id, req.Params["REQUEST_METHOD"], rawPath, start.UnixNano())
	if e := f.view.SleepEpoch(); e&1 == 1 && e != f.woke {
		f.woke = e
		f.sendCtl(CtlWake, c, gen, nil)
	}
	ri2 := &wagi.RequestInfo{Params: req.Params, ScriptName: scriptName, RawPathInfo: rawPathInfo,
		MatchedRoute: rt.Pattern, ContentLength: int64(len(req.Body)), ServerSoftware: f.routes.ServerSoftware,
		ModuleEnv: envMap(rt.Env), ArgvTemplate: rt.ArgvTemplate}
	run := &ipc.Run{ID: id, ModuleKey: rt.ModuleKey, ModulePath: rt.ModulePath, MemoryPages: rt.MemoryPages,
		Entrypoint: rt.Entrypoint, Args: wagi.Argv(ri2), Env: wagi.Env(ri2), Stdin: req.Body, StderrCap: rt.StderrCap}
	f.stdout.reset(fd, req.ID, rt.MaxOutput, f.slot)
	f.stderr.reset(f, c, ri, id, int(rt.StderrCap))
	done := f.e.runTo(ctx, run, &f.stdout, &f.stderr)
	status, bytesOut, keep := f.finish(fd, req.ID, id, done)
	rec := scoreboard.Record{ID: id, Method: req.Params["REQUEST_METHOD"], Path: rawPath, Status: status, Route: ri, Conn: c,
		BytesOut: bytesOut, Wall: time.Since(start), CPU: selfCPU() - cpu0, Outcome: uint8(done.Outcome)}
	if f.stdout.dropped {
		rec.Outcome |= 0x80 // headers the web server would act on were dropped
	}
	f.slot.Append(&rec)
	if done.Outcome != ipc.OutcomeOK {
		msg := done.Message
		if done.Outcome == ipc.OutcomeExit {
			msg = fmt.Sprintf("module exited with code %d", done.ExitCode)
		}
		f.sendCtl(CtlFailed, c, uint32(ri), append(append([]byte(id), 0), msg[:min(len(msg), 4096)]...))
	}
	f.stderr.flush(true)
	f.slot.Release()
	if !req.KeepConn || !keep {
		f.sendCtl(CtlClosed, c, gen, nil)
		return
	}
	rearm := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(fd), Pad: int32(gen)}
	_, _, _ = syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, uintptr(f.fds.Shared), unix.EPOLL_CTL_MOD, uintptr(fd), uintptr(unsafe.Pointer(&rearm)), 0, 0)
}

// needsManager reports whether the route's module makes outbound HTTP
// calls: those go through the manager's proxy with a grant it registers
// per request, so the manager runs them.
func (f *fastPath) needsManager(ctx context.Context, rt *ipc.Route) bool {
	if v, ok := f.http[rt.ModuleKey]; ok {
		return v
	}
	_, cm, err := f.e.module(ctx, &ipc.Run{ModuleKey: rt.ModuleKey, ModulePath: rt.ModulePath, MemoryPages: rt.MemoryPages})
	if err != nil {
		return true // the manager's path reports it
	}
	uses := false
	for _, fn := range cm.ImportedFunctions() {
		if mod, _, _ := fn.Import(); mod == wasmhost.HTTP {
			uses = true
			break
		}
	}
	f.http[rt.ModuleKey] = uses
	return uses
}

// reserved reports whether the manager answers path itself.
func (f *fastPath) reserved(path string) bool {
	if p := f.routes.ReservedPrefix; p != "" && strings.HasPrefix(path, p) {
		return true
	}
	return slices.Contains(f.routes.Reserved, path)
}

// read takes what the connection has, without waiting; it reports whether
// the peer closed it.
func (f *fastPath) read(fd int) (closed bool) {
	f.buf = f.buf[:0]
	for len(f.buf) < fastMaxRequest {
		if len(f.buf) == cap(f.buf) {
			f.buf = append(f.buf, make([]byte, cap(f.buf))...)[:len(f.buf)]
		}
		p := f.buf[len(f.buf):min(cap(f.buf), fastMaxRequest)]
		f.slot.Reading(len(f.buf) + 1) // may read: a kill from here on loses bytes
		n, _, e := syscall.RawSyscall6(syscall.SYS_RECVFROM, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)), unix.MSG_DONTWAIT, 0, 0)
		switch {
		case e == unix.EINTR:
			continue
		case e == unix.EAGAIN:
			return false
		case e != 0:
			return true
		case n == 0:
			return len(f.buf) == 0 || true
		}
		f.buf = f.buf[:len(f.buf)+int(n)]
		if _, ok := fcgi.ParseWhole(f.buf, fastMaxRequest, fastMaxRequest); ok {
			return false
		}
	}
	return false
}

// finish sends what is left of the answer: the whole response if nothing
// was committed yet, or the end of the stream; a guest that failed before
// committing gets the manager's 5xx.
func (f *fastPath) finish(fd int, fcgiID uint16, id string, done ipc.Done) (status int, bytesOut int64, keep bool) {
	o := &f.stdout
	if o.err != nil {
		return o.status, o.sent, false
	}
	fail := func(st int, msg string) (int, int64, bool) {
		if o.committed {
			// Cut short: nginx sees the stream end without END_REQUEST.
			return o.status, o.sent, false
		}
		f.resp = fcgi.AppendResponse(f.resp[:0], fcgiID, wagi.AppendErrorResponse(nil, id, st, msg, ""))
		if writeAll(fd, f.resp) != nil {
			return st, 0, false
		}
		f.slot.Answered()
		return st, 0, true
	}
	switch {
	case o.overflow:
		return fail(502, "the module's output is too large")
	case o.invalid:
		return fail(502, "the module's output is not a valid CGI response")
	case done.Outcome == ipc.OutcomeOK:
	default:
		return fail(500, "the module failed")
	}
	if !o.committed {
		if err := o.commitEnd(true); err != nil {
			if o.invalid {
				return fail(502, "the module's output is not a valid CGI response")
			}
			return o.status, o.sent, false
		}
		return o.status, o.sent, true
	}
	f.resp = fcgi.AppendResponse(f.resp[:0], fcgiID, nil)
	if writeAll(fd, f.resp) != nil {
		return o.status, o.sent, false
	}
	f.slot.Answered()
	return o.status, o.sent, true
}

func envMap(kv []string) map[string]string {
	if len(kv) == 0 {
		return nil
	}
	m := make(map[string]string, len(kv))
	for _, s := range kv {
		if k, v, ok := cutEq(s); ok {
			m[k] = v
		}
	}
	return m
}

func cutEq(s string) (string, string, bool) {
	i := bytes.IndexByte([]byte(s), '=')
	if i < 0 {
		return s, "", false
	}
	return s[:i], s[i+1:], true
}

// selfCPU is this process's CPU time so far (its own word: the manager
// reads the same clock from outside).
func selfCPU() time.Duration {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_PROCESS_CPUTIME_ID, &ts)
	return time.Duration(ts.Nano())
}

// writeAll writes p to a socket that may be non-blocking.
func writeAll(fd int, p []byte) error {
	for len(p) > 0 {
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case 0:
			p = p[n:]
		case unix.EINTR:
		case unix.EAGAIN:
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
			if _, err := unix.Poll(pfd, 30_000); err != nil && err != unix.EINTR {
				return err
			}
		default:
			return e
		}
	}
	return nil
}

// fastErr sends a fast request's guest stderr to the manager as it comes,
// in whole lines where it can (a line longer than a message goes in
// pieces, as the manager logs it anyway), at most max bytes and then a
// note, as the manager's own path does: what a killed request wrote before
// its kill reaches the log.
type fastErr struct {
	f       *fastPath
	c, ri   int
	id      string
	max     int
	sent    int
	buf     []byte
	dropped bool
}

const fastErrChunk = 4 << 10

func (e *fastErr) reset(f *fastPath, c, ri int, id string, max int) {
	*e = fastErr{f: f, c: c, ri: ri, id: id, max: max, buf: e.buf[:0]}
}

func (e *fastErr) Write(p []byte) (int, error) {
	n := len(p)
	if room := e.max - e.sent - len(e.buf); len(p) > room {
		p = p[:max(room, 0)]
		if !e.dropped {
			e.dropped = true
			defer func() {
				e.buf = append(e.buf, "\n[wagi-fcgi: stderr limit reached, rest dropped]\n"...)
				e.flush(true)
			}()
		}
	}
	e.buf = append(e.buf, p...)
	for len(e.buf) >= fastErrChunk {
		e.flush(false)
	}
	return n, nil
}

// flush sends what is buffered: up to the last newline unless all.
func (e *fastErr) flush(all bool) {
	if len(e.buf) == 0 {
		return
	}
	k := len(e.buf)
	if !all {
		k = min(k, fastErrChunk)
		if nl := bytes.LastIndexByte(e.buf[:k], '\n'); nl >= 0 {
			k = nl + 1
		}
	}
	// (The generation field carries the route, for the log line.)
	e.f.sendCtl(CtlStderr, e.c, uint32(e.ri), append(append([]byte(e.id), 0), e.buf[:k]...))
	e.sent += k
	e.buf = append(e.buf[:0], e.buf[k:]...)
}

var errOutputLimit = errors.New("output over max_output")
