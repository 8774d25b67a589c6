// Package runner holds one child for one run: it sends the run, passes the
// child's output on, logs its stderr, and enforces the run's wall-clock,
// CPU and output limits and its daily budgets from outside, killing the
// child when one is passed (the child cannot pre-empt a spinning guest). It
// says how the run ended; what the client is answered is the manager's.
package runner

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
)

const (
	// cpuPoll is how often a running child's CPU clock is read. The
	// per-request CPU limit is overshot by at most about this much.
	cpuPoll = 5 * time.Millisecond
	// demoteAfter is the CPU time after which a request's child is
	// reniced to demoteNice: a long CPU-bound request then yields to the
	// many short ones (hello-world pages take well under a millisecond),
	// and a module burning CPU cannot double its neighbours' latency.
	demoteAfter = DemoteAfter
	demoteNice  = DemoteNice
	// abortGrace is how long a request whose client went away may still
	// run before its child is killed.
	abortGrace = AbortGrace
)

// Child is one child process, as a run holds it.
// The limits' constants, shared with the fast path's tick (package
// manager), which enforces the same limits on requests it did not hold.
const (
	DemoteAfter = 20 * time.Millisecond
	DemoteNice  = 19
	AbortGrace  = 20 * time.Millisecond
)

type Child interface {
	PID() int
	// CPU is the child's CPU clock; after it exited, the final figure.
	CPU() time.Duration
	// Send writes a Run frame (and a streamed body), within a bound.
	Send(run *ipc.Run) error
	// Recv reads the next frame, waiting at most until deadline (the
	// zero time: no limit) or a Wake. A passed deadline or a wake
	// returns an error matching os.ErrDeadlineExceeded; any other error
	// means the stream is over.
	Recv(ctx context.Context, deadline time.Time) (ipc.Type, []byte, error)
	// Wake makes a Recv in progress return at once; any goroutine.
	Wake()
	// Kill sends SIGKILL; the first reason given is kept.
	Kill(reason Reason)
	KillReason() Reason
	// Exited is closed once the process is reaped.
	Exited() <-chan struct{}
	// ExitText says how it ended, for the log (after Exited).
	ExitText() string
	// SetNice sets the niceness of all its threads.
	SetNice(n int) error
	// BeginRun, EndRun and KillRun bracket a run, so that a timer that
	// fires as the run ends cannot kill the child's next one.
	BeginRun() uint64
	EndRun(seq uint64)
	KillRun(seq uint64, reason Reason)
}

// Output receives the module's stdout. An error matching
// *InvalidOutputError means the output is not a valid CGI response; any
// other means the client is gone.
type Output interface {
	Write(p []byte) error
}

// InvalidOutputError means the module's output is not a valid CGI response.
type InvalidOutputError struct{ Err error }

func (e *InvalidOutputError) Error() string { return "invalid CGI response: " + e.Err.Error() }
func (e *InvalidOutputError) Unwrap() error { return e.Err }

// Budget is the run's draw on its daily budgets: Spent is told the run's
// CPU so far at every poll, and says whether a budget is now spent.
type Budget interface {
	Spent(used time.Duration) bool
}

// Limits are what a run may use; 0 is no limit.
type Limits struct {
	Timeout   time.Duration // wall clock
	CPU       time.Duration // the child's CPU
	MaxOutput int64         // stdout bytes
}

// Outcome is how a run ended.
type Outcome int

const (
	// NotSent: the run could not be sent; the child was killed (IPC).
	NotSent Outcome = iota + 1
	// Succeeded: the child's Done says the module ended with exit code 0.
	Succeeded
	// ModuleFailed: its Done says the module trapped, exited non-zero or
	// could not start.
	ModuleFailed
	// BadDone: its Done frame did not decode; the child was killed (IPC).
	BadDone
	// Died: the child ended before its Done counted: killed (Killed says
	// why) or of its own accord (Killed is NotKilled).
	Died
)

// Result is how a run ended, and what it used.
type Result struct {
	Outcome Outcome
	Killed  Reason // why the child was killed, if it was
	Err     error  // what went wrong, for the log; nil when nothing did
	// StartCPU is the child's CPU clock as the run was sent, CPU what
	// it used from there to the end of the run.
	StartCPU time.Duration
	CPU      time.Duration
	Output   int64 // stdout bytes the child sent
	// Aborted: the client went away, but the run ended within the
	// grace (Err says so unless the module failed too).
	Aborted  bool
	ExitCode uint32 // the guest's, from Done
	// Reusable: the child ended the run cleanly and may take another.
	Reusable bool
}

// Run sends run to child c and holds the child until the run ends. A child
// that is killed is not waited for beyond its exit; a Reusable one is the
// caller's to give back. budget may be nil. The end of ctx (the client
// went away) is seen within abortGrace.
func Run(ctx context.Context, log *slog.Logger, c Child, run *ipc.Run, lim Limits, out Output, budget Budget) Result {
	startCPU := c.CPU()
	if err := c.Send(run); err != nil {
		c.Kill(KillIPC)
		<-c.Exited()
		return Result{Outcome: NotSent, Err: fmt.Errorf("send request to child %d: %w", c.PID(), err), Killed: KillIPC, StartCPU: startCPU}
	}

	// The holder waits for the child's frames itself, with a read deadline
	// at the next thing to check: the wall-clock limit, the next CPU
	// poll, or the end of the abort grace. The end of ctx (the client
	// went away) wakes the read.
	h := newHolding(log, c, run, lim, out, budget, startCPU)
	stopWake := context.AfterFunc(ctx, c.Wake)
	defer stopWake()
	// The loop below checks the limits between frames; while it is
	// blocked handing output to a client that reads slowly (Apache
	// streams), it checks nothing. This timer still ends the run at its
	// wall-clock limit then, so a slow reader cannot hold a child past
	// `timeout`. It acts only while this run is the child's.
	runSeq := c.BeginRun()
	if lim.Timeout > 0 {
		backstop := time.AfterFunc(lim.Timeout, func() { c.KillRun(runSeq, KillTimeout) })
		defer backstop.Stop()
	}
	defer c.EndRun(runSeq)
	waitCtx := ctx // replaced once the abort is seen, so Recv waits again

	for {
		t, payload, err := c.Recv(waitCtx, h.deadline())
		switch {
		case err != nil && errors.Is(err, os.ErrDeadlineExceeded):
			now := time.Now()
			if waitCtx.Err() != nil && !h.aborted {
				h.clientLeft(now)
				waitCtx = context.Background()
			}
			h.check(now)
		case err != nil:
			return h.childGone(err)
		case t == ipc.TypeDone:
			return h.done(payload)
		default:
			h.frame(t, payload)
		}
	}
}

// holding is the state of one run while Run holds its child.
type holding struct {
	log      *slog.Logger
	c        Child
	run      *ipc.Run
	lim      Limits
	out      Output
	budget   Budget
	startCPU time.Duration // the child's CPU clock at dispatch

	wallAt, pollAt, graceAt time.Time
	watching                bool // limits are enforced until the child is killed
	aborted                 bool // the client went away
	demoted, demoteFailed   bool
	stdoutBytes             int64
	stderrBytes             int64
	stderrLine              stderrLog
	outErr                  error // why the output or the child failed
}

func newHolding(log *slog.Logger, c Child, run *ipc.Run, lim Limits, out Output, budget Budget, startCPU time.Duration) *holding {
	start := time.Now()
	return &holding{log: log, c: c, run: run, lim: lim, out: out, budget: budget, startCPU: startCPU,
		wallAt: start.Add(lim.Timeout), pollAt: start.Add(cpuPoll), watching: true}
}

// kill kills the child; its limits are no longer watched.
func (h *holding) kill(reason Reason) {
	h.c.Kill(reason)
	h.watching = false
}

// deadline is when the next limit is to be checked: the wall-clock limit,
// the next CPU poll, or the end of the abort grace. The zero time once the
// child is killed: only its end is awaited.
func (h *holding) deadline() time.Time {
	if !h.watching {
		return time.Time{}
	}
	deadline := h.pollAt
	if h.wallAt.Before(deadline) {
		deadline = h.wallAt
	}
	if h.aborted && h.graceAt.Before(deadline) {
		deadline = h.graceAt
	}
	return deadline
}

// clientLeft notes that the client is gone. A request about to end anyway
// finishes (its child is kept: a new one costs far more than a few
// milliseconds of CPU); one still running after abortGrace is killed.
func (h *holding) clientLeft(now time.Time) {
	h.aborted, h.graceAt = true, now.Add(abortGrace)
}

// check enforces the limits at a deadline: the wall clock, the abort
// grace, the CPU limit and the daily budgets; and demotes a CPU-bound
// child.
func (h *holding) check(now time.Time) {
	if !h.watching {
		return
	}
	switch {
	case !now.Before(h.wallAt):
		h.kill(KillTimeout)
	case h.aborted && !now.Before(h.graceAt):
		h.kill(KillAbort)
	case !now.Before(h.pollAt):
		h.pollAt = now.Add(cpuPoll)
		used := h.c.CPU() - h.startCPU
		if h.lim.CPU > 0 && used > h.lim.CPU {
			h.kill(KillCPU)
		} else if h.budget != nil && h.budget.Spent(used) {
			h.kill(KillBudget)
		} else if !h.demoted && !h.demoteFailed && used > demoteAfter {
			h.demote()
		}
	}
}

// demote renices a CPU-bound child, so it yields to short requests. It
// counts as demoted only if it took: a child that was never reniced needs
// no privilege to give back (without CAP_SYS_NICE every such child was
// retired, and its replacement charged to nobody).
func (h *holding) demote() {
	if err := h.c.SetNice(demoteNice); err != nil {
		h.demoteFailed = true
		h.log.Debug("demoting a CPU-bound child", "pid", h.c.PID(), "err", err)
	} else {
		h.demoted = true
	}
}

// frame takes a frame of the running request: output or stderr.
func (h *holding) frame(t ipc.Type, payload []byte) {
	switch t {
	case ipc.TypeStdout:
		h.stdout(payload)
	case ipc.TypeStderr:
		// The child was told to forward at most StderrCap bytes
		// (and a note that it dropped the rest); more is a child
		// that no longer follows the protocol, flooding the log.
		if h.stderrBytes += int64(len(payload)); h.stderrBytes > int64(h.run.StderrCap)+stderrSlack {
			h.outErr = fmt.Errorf("child %d sent %d bytes of stderr, over the cap of %d", h.c.PID(), h.stderrBytes, h.run.StderrCap)
			h.kill(KillIPC)
			return
		}
		logStderr(h.log, &h.stderrLine, payload, false)
	default:
		h.kill(KillIPC)
		h.outErr = fmt.Errorf("unexpected %s frame from child", t)
	}
}

// stdout passes output on within max_output, unless the output has
// failed or nobody is left to send it to.
func (h *holding) stdout(payload []byte) {
	if h.outErr != nil {
		return
	}
	h.stdoutBytes += int64(len(payload))
	if h.lim.MaxOutput > 0 && h.stdoutBytes > h.lim.MaxOutput {
		h.outErr = fmt.Errorf("output passed max_output (%d bytes)", h.lim.MaxOutput)
		h.kill(KillOutput)
		return
	}
	if h.aborted {
		return // nobody to send it to
	}
	if err := h.out.Write(payload); err != nil {
		h.outErr = err
		var inv *InvalidOutputError
		if errors.As(err, &inv) {
			h.kill(KillInvalid)
		} else {
			// Writing to the front end failed: it is gone.
			h.kill(KillAbort)
		}
	}
}

// childGone ends a run whose stream ended (err) before Done: the child was
// killed by us, crashed, or broke the protocol.
func (h *holding) childGone(err error) Result {
	if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && h.watching {
		// A frame the protocol does not allow (too large): the
		// child is not to be trusted with anything more.
		h.kill(KillIPC)
		h.outErr = fmt.Errorf("child %d broke the protocol: %w", h.c.PID(), err)
	}
	<-h.c.Exited()
	cpu := h.c.CPU() - h.startCPU
	logStderr(h.log, &h.stderrLine, nil, true)
	return h.died(cpu)
}

// done ends a run with the child's Done frame.
func (h *holding) done(payload []byte) Result {
	c := h.c
	var d ipc.Done
	cpu := c.CPU() - h.startCPU
	logStderr(h.log, &h.stderrLine, nil, true)
	if err := ipc.DecodeDone(payload, &d); err != nil {
		c.Kill(KillIPC) // its slot drains and replaces it
		return Result{Outcome: BadDone, Err: err, Killed: KillIPC, StartCPU: h.startCPU, CPU: cpu, Output: h.stdoutBytes}
	}
	if c.KillReason() != NotKilled {
		// Done crossed our kill on the way: the kill decides.
		<-c.Exited()
		return h.died(c.CPU() - h.startCPU)
	}
	res := Result{Outcome: Succeeded, StartCPU: h.startCPU, CPU: cpu, Output: h.stdoutBytes, Reusable: true, ExitCode: d.ExitCode}
	if h.aborted {
		res.Aborted, res.Err = true, errors.New("client went away")
	}
	if h.demoted && c.SetNice(0) != nil {
		// Lowering niceness again needs privilege; a child that
		// cannot get it back is retired instead.
		c.Kill(KillRecycle)
		res.Reusable = false
	}
	switch d.Outcome {
	case ipc.OutcomeOK:
	case ipc.OutcomeExit:
		res.Outcome, res.Err = ModuleFailed, fmt.Errorf("module exited with code %d", d.ExitCode)
	default:
		res.Outcome, res.Err = ModuleFailed, fmt.Errorf("%s: %s", d.Outcome, d.Message)
	}
	return res
}

// died describes a run whose child ended before its Done counted.
func (h *holding) died(cpu time.Duration) Result {
	why := h.c.KillReason()
	res := Result{Outcome: Died, Killed: why, StartCPU: h.startCPU, CPU: cpu, Output: h.stdoutBytes, Err: h.outErr}
	switch why {
	case KillTimeout:
		res.Err = fmt.Errorf("wall-clock limit reached; child %d killed", h.c.PID())
	case KillCPU:
		res.Err = fmt.Errorf("CPU limit reached (%s used); child %d killed", cpu.Round(time.Millisecond), h.c.PID())
	case KillOutput, KillInvalid:
		// outErr says what was wrong with the output.
	case KillBudget:
		res.Err = fmt.Errorf("daily CPU budget spent (%s used by this request); child %d killed", cpu.Round(time.Millisecond), h.c.PID())
	case KillAbort:
		if res.Err == nil {
			res.Err = errors.New("client went away")
		}
	default:
		res.Err = fmt.Errorf("child %d died: %s", h.c.PID(), h.c.ExitText())
	}
	return res
}
