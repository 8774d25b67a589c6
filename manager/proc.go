package manager

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/wagi-fcgi/wagi-fcgi/cpuacct"
	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/internal/rawio"
	"github.com/wagi-fcgi/wagi-fcgi/internal/sandbox"
	"github.com/wagi-fcgi/wagi-fcgi/internal/scoreboard"
)

// proc is one child process and the manager's end of its socketpair.
type proc struct {
	id   int // slot number, for logs
	pid  int
	cmd  *exec.Cmd
	conn net.Conn
	w    *ipc.Writer
	// r reads what the child sends. Only the holder of the child reads,
	// in its own goroutine (see recv): a reader goroutine per child
	// handing frames over a channel cost two goroutine wakeups per
	// request, which on a small machine were a measurable share of the
	// manager's CPU.
	r *ipc.Reader
	// exited is closed once the process has been reaped; state is set
	// before that.
	exited chan struct{}
	state  *os.ProcessState

	mu       sync.Mutex
	killedBy killReason   // why the manager killed it; notKilled if it did not
	running  chargeTo     // who pays for the request it runs; empty between requests
	runSeq   uint64       // the run in progress (beginRun); 0 between runs
	runs     uint64       // runs begun
	requests atomic.Int64 // requests served; read by Children
	runBuf   []byte       // reused encoding buffer for Run frames

	// owner is who the child last ran for and endCPU its clock then: CPU
	// the child uses while idle (the Go runtime cleaning up after that
	// request) is charged to that module when the child is next used.
	// Touched only by the holder.
	owner  chargeTo
	endCPU time.Duration
	// spawnCPU is what starting the child cost the manager's spawning
	// thread.
	spawnCPU time.Duration

	// The fast path (nil without it): the child's control socket, its
	// scoreboard slot and number, and, once it has entered, its state
	// there.
	fastCtl  int
	fastSlot *scoreboard.Slot
	fastIdx  int
	fast     *fastKid
	fastOnce sync.Once
}

// kill sends SIGKILL and records why. Only the first reason is kept.
func (p *proc) kill(reason killReason) {
	p.mu.Lock()
	if p.killedBy == notKilled {
		p.killedBy = reason
	}
	p.mu.Unlock()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil && !errors.Is(err, os.ErrProcessDone) {
		// Cannot happen once startProc checked the right to signal, but
		// say so loudly if it does.
		slogDefaultError("SIGKILL of a child failed", p.pid, err)
	}
}

// setRunning records who pays for the request the child runs now; the
// slot charges them for a replacement if the child dies during it.
func (p *proc) setRunning(to chargeTo) {
	p.mu.Lock()
	p.running = to
	p.mu.Unlock()
}

// beginRun marks the start of a run on the child and returns its number.
func (p *proc) beginRun() uint64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.runs++
	p.runSeq = p.runs
	return p.runSeq
}

// endRun marks the end of run seq: killRun no longer acts for it.
func (p *proc) endRun(seq uint64) {
	p.mu.Lock()
	if p.runSeq == seq {
		p.runSeq = 0
	}
	p.mu.Unlock()
}

// killRun kills the child for reason if run seq is still in progress: a
// timer that fires as the run ends must not kill the child's next one.
func (p *proc) killRun(seq uint64, reason killReason) {
	p.mu.Lock()
	current := p.runSeq == seq
	if current && p.killedBy == notKilled {
		p.killedBy = reason
	}
	p.mu.Unlock()
	if current {
		p.kill(reason) // the reason is set: the first one decides
	}
}

// runningFor is who paid for the request the child was running.
func (p *proc) runningFor() chargeTo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.running
}

func (p *proc) killReason() killReason {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.killedBy
}

func slogDefaultError(msg string, pid int, err error) {
	slog.Default().Error(msg, "pid", pid, "err", err)
}

// alive reports whether the process has not been seen to exit.
func (p *proc) alive() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

// cpu returns the CPU time the child has used so far; after it was reaped,
// the final figure from its rusage.
func (p *proc) cpu() time.Duration {
	select {
	case <-p.exited:
		return cpuacct.Reaped(p.state)
	default:
	}
	d, err := cpuacct.ProcessCPU(p.pid)
	if err != nil {
		// Reaped between the check and the read: wait for the final figure.
		<-p.exited
		return cpuacct.Reaped(p.state)
	}
	return d
}

// send writes a Run frame to the child.
func (p *proc) send(run *ipc.Run) error {
	// A child that stops reading (compromised, or stuck) must not hold
	// its holder's goroutine forever: the caller kills it on an error.
	if err := p.conn.SetWriteDeadline(time.Now().Add(sendTimeout)); err != nil {
		return err
	}
	var err error
	p.runBuf, err = p.w.WriteRun(p.runBuf[:0], run) // and a streamed body
	if cap(p.runBuf) > 1<<20 {
		p.runBuf = nil // don't pin a large request body
	}
	return err
}

// sendTimeout bounds handing a request (and its body, up to max_body) to a
// child, which reads it at once when it is well.
const sendTimeout = 30 * time.Second

// recv reads the child's next frame, waiting at most until deadline (the
// zero time: no limit) or until ctx is done, if the caller arranged for
// that with context.AfterFunc(ctx, p.wake). The payload is valid until the
// next recv. A passed deadline or a done ctx returns an error matching
// os.ErrDeadlineExceeded and keeps a partly read frame for the next call;
// any other error means the stream is over (the child exited, or was
// killed).
func (p *proc) recv(ctx context.Context, deadline time.Time) (ipc.Type, []byte, error) {
	if err := p.conn.SetReadDeadline(deadline); err != nil {
		return 0, nil, err
	}
	// After the deadline is set: a wake from here on overrides it, and an
	// earlier end of ctx is seen here.
	if ctx.Err() != nil {
		return 0, nil, os.ErrDeadlineExceeded
	}
	return p.r.ReadFrame()
}

// wake makes a recv in progress return at once with
// os.ErrDeadlineExceeded; it is how a context's end reaches a holder
// waiting for its child. It is safe to call from any goroutine.
func (p *proc) wake() {
	_ = p.conn.SetReadDeadline(time.Unix(1, 0))
}

// timedOut reports whether a recv error is a passed deadline (or a wake),
// as opposed to the end of the stream.
func timedOut(err error) bool {
	return errors.Is(err, os.ErrDeadlineExceeded)
}

// setNice sets the scheduling niceness of every thread of the child (on
// Linux, setpriority on a pid reaches one thread only). Threads made later
// inherit it from their creator.
func (p *proc) setNice(n int) error {
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", p.pid))
	if err != nil {
		return err
	}
	var first error
	for _, e := range ents {
		tid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		if err := syscall.Setpriority(syscall.PRIO_PROCESS, tid, n); err != nil && first == nil && !errors.Is(err, syscall.ESRCH) {
			first = err
		}
	}
	return first
}

// spawner starts child processes from one goroutine locked to its OS thread.
// PR_SET_PDEATHSIG fires when the *thread* that forked the child exits, not
// the process (golang/go#27505); a thread that lives as long as the pool
// makes "the child dies with the manager" mean what it says.
type spawner struct {
	reqs chan spawnReq
	done chan struct{}
}

type spawnReq struct {
	cmd   *exec.Cmd
	reply chan spawnReply
}

// spawnReply is how a start went, and the spawning thread's CPU for it
// (fork and exec cost the parent too, and a respawn is charged to whoever
// caused it).
type spawnReply struct {
	err error
	cpu time.Duration
}

func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq), done: make(chan struct{})}
	go func() {
		runtime.LockOSThread()
		// Never unlocked: when this goroutine returns (pool closed), the
		// thread exits with it, and any child still alive gets SIGKILL.
		//
		// no_new_privs is a per-thread attribute inherited across fork
		// and exec, so setting it on this thread gives it to every child
		// from its first instruction (in the child, prctl would reach only
		// the thread that calls it). Nothing else runs on this thread.
		nnpErr := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)
		if nnpErr == nil {
			// Capabilities, too, pass from this thread to every child:
			// see sandbox.SpawnerThread.
			if err := sandbox.SpawnerThread(); err != nil {
				nnpErr = fmt.Errorf("capabilities: %w", err)
			}
		}
		for r := range s.reqs {
			if nnpErr != nil {
				r.reply <- spawnReply{err: fmt.Errorf("no_new_privs: %w", nnpErr)}
				continue
			}
			before := threadCPU()
			err := r.cmd.Start()
			r.reply <- spawnReply{err: err, cpu: threadCPU() - before}
		}
		close(s.done)
	}()
	return s
}

func (s *spawner) start(ctx context.Context, cmd *exec.Cmd) (time.Duration, error) {
	reply := make(chan spawnReply, 1)
	select {
	case s.reqs <- spawnReq{cmd: cmd, reply: reply}:
	case <-ctx.Done():
		return 0, ctx.Err()
	}
	r := <-reply
	return r.cpu, r.err
}

// threadCPU is the CPU time of the calling OS thread.
func threadCPU() time.Duration {
	var ru unix.Rusage
	if unix.Getrusage(unix.RUSAGE_THREAD, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func (s *spawner) close() {
	close(s.reqs)
	<-s.done
}

// closeOnExecInherited marks every file descriptor above stderr that this
// process inherited as close-on-exec, so none leaks into a child: os/exec
// passes only what it is given, but a descriptor inherited without
// FD_CLOEXEC survives exec regardless.
func closeOnExecInherited() error {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return err
	}
	for _, e := range ents {
		fd, err := strconv.Atoi(e.Name())
		if err != nil || fd <= 2 {
			continue
		}
		syscall.CloseOnExec(fd)
	}
	return nil
}

// procConfig is what starting a child needs.
type procConfig struct {
	command  []string // argv of the child, e.g. [/usr/bin/wagi-fcgi child]
	env      []string // the child's whole environment
	cred     *syscall.Credential
	cacheDir string
	logger   *slog.Logger
	ready    time.Duration // how long a child may take to say Ready
	// inheritStdio gives the child the manager's stdin, stdout and stderr
	// (wagi-fcgi run) instead of logging its stderr.
	inheritStdio bool

	// addressSpace is the child's RLIMIT_AS in bytes ([pool]
	// child_memory); 0 leaves it as inherited.
	addressSpace int64
	// uidBase is slot 0's own uid when cred is set: slot i runs as
	// uidBase+i (see sandbox.IDs).
	uidBase uint32
	// fast, when set, starts children on the fast path.
	fast *FastPath
}

var errChildNotReady = errors.New("child did not become ready")

// startProc starts one child and waits for its Ready frame.
func startProc(ctx context.Context, sp *spawner, cfg *procConfig, id int) (*proc, error) {
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socketpair: %w", err)
	}
	parentEnd := os.NewFile(uintptr(fds[0]), "ipc-manager")
	childEnd := os.NewFile(uintptr(fds[1]), "ipc-child")
	defer childEnd.Close()
	conn, err := net.FileConn(parentEnd)
	parentEnd.Close()
	if err != nil {
		childEnd.Close()
		return nil, fmt.Errorf("ipc conn: %w", err)
	}
	conn = rawio.Wrap(conn) // raw non-blocking reads and writes: see package rawio
	var errR, errW *os.File
	if !cfg.inheritStdio {
		errR, errW, err = os.Pipe()
		if err != nil {
			conn.Close()
			return nil, fmt.Errorf("stderr pipe: %w", err)
		}
	}

	args := append(append([]string(nil), cfg.command[1:]...), "--cache", cfg.cacheDir)
	if cfg.addressSpace > 0 {
		args = append(args, "--address-space", strconv.FormatInt(cfg.addressSpace, 10))
	}
	cred, ids := childIDs(cfg, id)
	if cred != nil {
		args = append(args, "--uids", ids.Flag())
	}
	cmd := exec.Command(cfg.command[0], args...)
	cmd.Env = cfg.env
	cmd.Dir = "/"
	if cfg.inheritStdio {
		cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	} else {
		cmd.Stderr = errW
	}
	cmd.ExtraFiles = []*os.File{childEnd} // fd 3
	var fk fastStart
	if cfg.fast != nil {
		if fk, err = cfg.fast.prepare(); err != nil {
			conn.Close()
			if errW != nil {
				errR.Close()
				errW.Close()
			}
			return nil, err
		}
		defer fk.closeChildEnds()
		// fds 4-7: control socket, shared epoll set, manager page, slot.
		cmd.ExtraFiles = append(cmd.ExtraFiles, fk.ctlChild, fk.epoll, fk.page, fk.slot.File)
		args = append(args, "--fast", fk.childFlag(cfg.fast.base))
		cmd.Args = append([]string{cfg.command[0]}, args...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{
		Pdeathsig:  syscall.SIGKILL,
		Setpgid:    true, // a terminal's ^C reaches the manager, which decides
		Credential: cred,
	}
	spawnCPU, err := sp.start(ctx, cmd)
	if errW != nil {
		errW.Close()
	}
	if err != nil {
		if errR != nil {
			errR.Close()
		}
		conn.Close()
		fk.abandon(cfg.fast)
		return nil, fmt.Errorf("start child: %w", err)
	}

	p := &proc{
		id:       id,
		pid:      cmd.Process.Pid,
		cmd:      cmd,
		conn:     conn,
		w:        ipc.NewWriter(conn, 64<<10),
		r:        ipc.NewReader(conn, 64<<10),
		exited:   make(chan struct{}),
		spawnCPU: spawnCPU,
		fastCtl:  fk.ctl,
		fastSlot: fk.slot,
		fastIdx:  fk.idx,
	}
	p.r.SetMaxPayload(ipc.MaxChildPayload)
	log := cfg.logger.With("child", id, "pid", p.pid)
	// The child's own stderr (Go runtime panics, not guest output) goes to
	// the log line by line.
	if errR != nil {
		go func() {
			defer errR.Close()
			sc := bufio.NewScanner(errR)
			sc.Buffer(make([]byte, 4096), 64<<10)
			for sc.Scan() {
				log.Warn("child stderr", "line", sc.Text())
			}
		}()
	}
	go func() {
		_ = cmd.Wait()
		p.state = cmd.ProcessState
		conn.Close()
		close(p.exited)
	}()

	stop := context.AfterFunc(ctx, p.wake)
	defer stop()
	t, _, err := p.recv(ctx, time.Now().Add(cfg.ready))
	switch {
	case err == nil && t == ipc.TypeReady:
		// Limits are enforced by SIGKILL: a manager that may not signal
		// its children (a child user without CAP_KILL) must not serve, or
		// a runaway request would never be answered.
		if err := syscall.Kill(p.pid, 0); err != nil {
			p.conn.Close()
			return nil, fmt.Errorf("the manager cannot signal child %d (%v): it needs CAP_KILL when children run as another user", p.pid, err)
		}
		if cred != nil {
			if err := checkChildUIDs(p.pid, ids); err != nil {
				p.kill(killBadStart)
				<-p.exited
				return nil, err
			}
		}
		return p, nil
	case timedOut(err) && ctx.Err() != nil:
		p.kill(killShutdown)
		<-p.exited
		return nil, ctx.Err()
	case timedOut(err):
		p.kill(killStartTimeout)
		<-p.exited
		return nil, fmt.Errorf("%w within %s", errChildNotReady, cfg.ready)
	default:
		p.kill(killBadStart)
		<-p.exited
		return nil, fmt.Errorf("%w: %s", errChildNotReady, exitText(p.state))
	}
}

// childIDs is how slot id's child starts when the manager is root: as uid
// 0 in the children's group, with only CAP_SETUID (see
// sandbox.SpawnerThread), told to switch to ids itself.
func childIDs(cfg *procConfig, id int) (*syscall.Credential, sandbox.IDs) {
	if cfg.cred == nil {
		return nil, sandbox.IDs{}
	}
	ids := sandbox.IDs{Own: int(cfg.uidBase) + id, Shared: int(cfg.cred.Uid)}
	return &syscall.Credential{Uid: 0, Gid: cfg.cred.Gid, Groups: []uint32{}}, ids
}

// checkChildUIDs makes sure a child that said Ready runs as ids: its real
// and saved uid its own, its effective uid the shared one. The child
// switches itself; the manager does not take its word for it.
func checkChildUIDs(pid int, ids sandbox.IDs) error {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return fmt.Errorf("child %d: %w", pid, err)
	}
	want := fmt.Sprintf("\nUid:\t%d\t%d\t%d\t%d\n", ids.Own, ids.Shared, ids.Own, ids.Shared)
	if !strings.Contains(string(b), want) {
		return fmt.Errorf("child %d does not run as uids %s (want%q)", pid, ids.Flag(), want)
	}
	return nil
}

// exitText describes how a process ended, for logs.
func exitText(ps *os.ProcessState) string {
	if ps == nil {
		return "not started"
	}
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return "killed by " + ws.Signal().String()
	}
	return fmt.Sprintf("exit status %d", ps.ExitCode())
}

// procChild is a proc as the runner holds it.
type procChild struct{ p *proc }

func (c procChild) PID() int                { return c.p.pid }
func (c procChild) CPU() time.Duration      { return c.p.cpu() }
func (c procChild) Send(run *ipc.Run) error { return c.p.send(run) }
func (c procChild) Recv(ctx context.Context, deadline time.Time) (ipc.Type, []byte, error) {
	return c.p.recv(ctx, deadline)
}
func (c procChild) Wake()                            { c.p.wake() }
func (c procChild) Kill(reason killReason)           { c.p.kill(reason) }
func (c procChild) KillReason() killReason           { return c.p.killReason() }
func (c procChild) Exited() <-chan struct{}          { return c.p.exited }
func (c procChild) ExitText() string                 { return exitText(c.p.state) }
func (c procChild) SetNice(n int) error              { return c.p.setNice(n) }
func (c procChild) BeginRun() uint64                 { return c.p.beginRun() }
func (c procChild) EndRun(seq uint64)                { c.p.endRun(seq) }
func (c procChild) KillRun(seq uint64, r killReason) { c.p.killRun(seq, r) }
