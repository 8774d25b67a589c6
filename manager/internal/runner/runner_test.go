package runner

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
)

// fakeChild is a child that sends what a test scripts: frames, a broken
// stream, a crash; its CPU clock moves by cpuPerRead at every read, like a
// guest that spins.
type fakeChild struct {
	frames     chan fakeFrame
	wake       chan struct{}
	exited     chan struct{}
	sendErr    error
	cpuPerRead time.Duration

	mu       sync.Mutex
	cpu      time.Duration
	killedBy Reason
	nice     int
	demoted  bool   // it was reniced at some point
	onNice   func() // called when it is reniced (under mu)
	runSeq   uint64
	exitOnce sync.Once
}

type fakeFrame struct {
	t       ipc.Type
	payload []byte
	err     error // the stream ends with it
}

func newFakeChild(frames ...fakeFrame) *fakeChild {
	c := &fakeChild{frames: make(chan fakeFrame, len(frames)+1), wake: make(chan struct{}, 1), exited: make(chan struct{})}
	for _, f := range frames {
		c.frames <- f
	}
	return c
}

func (c *fakeChild) PID() int { return 4242 }

func (c *fakeChild) CPU() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.cpu += c.cpuPerRead
	return c.cpu
}

func (c *fakeChild) Send(*ipc.Run) error { return c.sendErr }

func (c *fakeChild) Recv(ctx context.Context, deadline time.Time) (ipc.Type, []byte, error) {
	var timeout <-chan time.Time
	if !deadline.IsZero() {
		t := time.NewTimer(time.Until(deadline))
		defer t.Stop()
		timeout = t.C
	}
	if ctx.Err() != nil {
		return 0, nil, os.ErrDeadlineExceeded
	}
	select {
	case f := <-c.frames:
		if f.err != nil {
			return 0, nil, f.err
		}
		return f.t, f.payload, nil
	default:
	}
	select {
	case f := <-c.frames:
		if f.err != nil {
			return 0, nil, f.err
		}
		return f.t, f.payload, nil
	case <-c.exited:
		return 0, nil, io.EOF
	case <-timeout:
		return 0, nil, os.ErrDeadlineExceeded
	case <-c.wake:
		return 0, nil, os.ErrDeadlineExceeded
	}
}

func (c *fakeChild) Wake() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *fakeChild) Kill(reason Reason) {
	c.mu.Lock()
	if c.killedBy == NotKilled {
		c.killedBy = reason
	}
	c.mu.Unlock()
	c.exit()
}

func (c *fakeChild) exit() { c.exitOnce.Do(func() { close(c.exited) }) }

func (c *fakeChild) KillReason() Reason {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.killedBy
}

func (c *fakeChild) Exited() <-chan struct{} { return c.exited }

func (c *fakeChild) ExitText() string {
	if c.KillReason() != NotKilled {
		return "killed by killed"
	}
	return "exit status 2"
}

func (c *fakeChild) SetNice(n int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.nice = n
	if n != 0 {
		c.demoted = true
		if c.onNice != nil {
			c.onNice()
		}
	}
	return nil
}

func (c *fakeChild) BeginRun() uint64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.runSeq++
	return c.runSeq
}

func (c *fakeChild) EndRun(uint64) {}

func (c *fakeChild) KillRun(seq uint64, reason Reason) {
	c.mu.Lock()
	current := seq == c.runSeq
	c.mu.Unlock()
	if current {
		c.Kill(reason)
	}
}

// collect is an Output that keeps what it is given, or fails with err.
type collect struct {
	got []byte
	err error
}

func (o *collect) Write(p []byte) error {
	if o.err != nil {
		return o.err
	}
	o.got = append(o.got, p...)
	return nil
}

// spentAfter is a budget that is spent once the run has used more than
// limit.
type spentAfter struct{ limit time.Duration }

func (b spentAfter) Spent(used time.Duration) bool { return used > b.limit }

func stdout(s string) fakeFrame { return fakeFrame{t: ipc.TypeStdout, payload: []byte(s)} }

func done(d ipc.Done) fakeFrame { return fakeFrame{t: ipc.TypeDone, payload: ipc.AppendDone(nil, &d)} }

const hello = "Content-Type: text/plain\n\nhello"

func TestARunEndsWithTheRightTypedResult(t *testing.T) {
	long := Limits{Timeout: time.Minute}
	tests := []struct {
		name    string
		child   func() *fakeChild
		lim     Limits
		out     *collect
		budget  Budget
		cancel  bool // the client goes away at once
		outcome Outcome
		killed  Reason
		errHas  string // in Err; "" for no error
		// reusable: the child may take another request.
		reusable bool
		output   int64 // stdout bytes counted
	}{
		{name: "a module that answers leaves its child reusable",
			child: func() *fakeChild { return newFakeChild(stdout(hello), done(ipc.Done{Outcome: ipc.OutcomeOK})) },
			lim:   long, outcome: Succeeded, reusable: true, output: int64(len(hello))},
		{name: "a module that exits non-zero failed, and its child is reusable",
			child: func() *fakeChild { return newFakeChild(done(ipc.Done{Outcome: ipc.OutcomeExit, ExitCode: 3})) },
			lim:   long, outcome: ModuleFailed, errHas: "module exited with code 3", reusable: true},
		{name: "a child past its wall-clock limit is killed for timeout",
			child: func() *fakeChild { return newFakeChild() },
			lim:   Limits{Timeout: 30 * time.Millisecond}, outcome: Died, killed: KillTimeout, errHas: "wall-clock limit reached"},
		{name: "a child past its CPU limit is killed for cpu",
			child: func() *fakeChild {
				c := newFakeChild()
				c.cpuPerRead = 10 * time.Millisecond
				return c
			},
			lim: Limits{Timeout: time.Minute, CPU: 30 * time.Millisecond}, outcome: Died, killed: KillCPU, errHas: "CPU limit reached"},
		{name: "a child whose module spends the daily budget is killed for it",
			child: func() *fakeChild {
				c := newFakeChild()
				c.cpuPerRead = 10 * time.Millisecond
				return c
			},
			lim: long, budget: spentAfter{limit: 20 * time.Millisecond}, outcome: Died, killed: KillBudget, errHas: "daily CPU budget spent"},
		{name: "output past max_output is killed for max_output",
			child: func() *fakeChild {
				return newFakeChild(stdout(strings.Repeat("x", 600)), stdout(strings.Repeat("x", 600)), done(ipc.Done{Outcome: ipc.OutcomeOK}))
			},
			lim: Limits{Timeout: time.Minute, MaxOutput: 1000}, outcome: Died, killed: KillOutput, errHas: "max_output (1000 bytes)", output: 1200},
		{name: "output that is not a valid CGI response is killed for invalid output",
			child: func() *fakeChild { return newFakeChild(stdout("garbage"), done(ipc.Done{Outcome: ipc.OutcomeOK})) },
			out:   &collect{err: &InvalidOutputError{Err: errors.New("no headers")}},
			lim:   long, outcome: Died, killed: KillInvalid, errHas: "invalid CGI response: no headers", output: 7},
		{name: "output the front end cannot take is a client abort",
			child: func() *fakeChild { return newFakeChild(stdout(hello), done(ipc.Done{Outcome: ipc.OutcomeOK})) },
			out:   &collect{err: io.ErrClosedPipe},
			lim:   long, outcome: Died, killed: KillAbort, errHas: io.ErrClosedPipe.Error(), output: int64(len(hello))},
		{name: "a frame the protocol does not allow there is an ipc error",
			child: func() *fakeChild { return newFakeChild(fakeFrame{t: ipc.TypeRun}) },
			lim:   long, outcome: Died, killed: KillIPC, errHas: "died"},
		{name: "a broken stream is an ipc error",
			child: func() *fakeChild { return newFakeChild(fakeFrame{err: errors.New("frame too large")}) },
			lim:   long, outcome: Died, killed: KillIPC, errHas: "died"},
		{name: "stderr past its cap is an ipc error",
			child: func() *fakeChild {
				return newFakeChild(fakeFrame{t: ipc.TypeStderr, payload: make([]byte, 16+stderrSlack+1)})
			},
			lim: long, outcome: Died, killed: KillIPC, errHas: "died"},
		{name: "a Done that does not decode is an ipc error",
			child: func() *fakeChild { return newFakeChild(fakeFrame{t: ipc.TypeDone, payload: []byte{0xff}}) },
			lim:   long, outcome: BadDone, killed: KillIPC, errHas: ""},
		{name: "a run that cannot be sent is an ipc error",
			child: func() *fakeChild {
				c := newFakeChild()
				c.sendErr = errors.New("broken pipe")
				return c
			},
			lim: long, outcome: NotSent, killed: KillIPC, errHas: "send request to child 4242: broken pipe"},
		{name: "a child that dies on its own was not killed",
			child: func() *fakeChild {
				c := newFakeChild(fakeFrame{err: io.EOF})
				c.exit()
				return c
			},
			lim: long, outcome: Died, killed: NotKilled, errHas: "child 4242 died: exit status 2"},
		{name: "a child still running when its client has gone is killed after the grace",
			child:  func() *fakeChild { return newFakeChild() },
			cancel: true,
			lim:    long, outcome: Died, killed: KillAbort, errHas: "client went away"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := tt.child()
			out := tt.out
			if out == nil {
				out = &collect{}
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				cancel()
			}
			run := &ipc.Run{ID: "t", StderrCap: 16}
			res := Run(ctx, slog.New(slog.DiscardHandler), c, run, tt.lim, out, tt.budget)
			if res.Outcome != tt.outcome || res.Killed != tt.killed || res.Reusable != tt.reusable {
				t.Fatalf("outcome %d, killed %q, reusable %v; want %d, %q, %v (err: %v)",
					res.Outcome, res.Killed, res.Reusable, tt.outcome, tt.killed, tt.reusable, res.Err)
			}
			if got := c.KillReason(); got != tt.killed {
				t.Errorf("the child was killed for %q, the result says %q", got, tt.killed)
			}
			switch {
			case tt.errHas == "" && tt.outcome != BadDone && res.Err != nil:
				t.Errorf("err %v, want none", res.Err)
			case tt.outcome == BadDone && res.Err == nil:
				t.Error("no error for a Done that does not decode")
			case tt.errHas != "" && (res.Err == nil || !strings.Contains(res.Err.Error(), tt.errHas)):
				t.Errorf("err %v, want one that says %q", res.Err, tt.errHas)
			}
			if res.Output != tt.output {
				t.Errorf("%d stdout bytes counted, want %d", res.Output, tt.output)
			}
			if tt.killed == KillCPU && res.CPU <= tt.lim.CPU {
				t.Errorf("killed for CPU after %v, within the limit of %v", res.CPU, tt.lim.CPU)
			}
		})
	}
}

func TestOutputPastMaxOutputIsNotPassedOn(t *testing.T) {
	c := newFakeChild(stdout(strings.Repeat("a", 600)), stdout(strings.Repeat("b", 600)), done(ipc.Done{Outcome: ipc.OutcomeOK}))
	out := &collect{}
	Run(context.Background(), slog.New(slog.DiscardHandler), c, &ipc.Run{StderrCap: 16}, Limits{Timeout: time.Minute, MaxOutput: 1000}, out, nil)
	if string(out.got) != strings.Repeat("a", 600) {
		t.Fatalf("%d bytes passed on, want the 600 within max_output", len(out.got))
	}
}

func TestACPUBoundChildIsDemotedAndRestoredBeforeItIsReused(t *testing.T) {
	c := newFakeChild()
	c.cpuPerRead = 10 * time.Millisecond
	// Once demoted (past demoteAfter of CPU), the module ends.
	c.onNice = func() { c.frames <- done(ipc.Done{Outcome: ipc.OutcomeOK}) }
	res := Run(context.Background(), slog.New(slog.DiscardHandler), c, &ipc.Run{StderrCap: 16}, Limits{Timeout: time.Minute}, &collect{}, nil)
	if res.Outcome != Succeeded || !res.Reusable {
		t.Fatalf("outcome %d, reusable %v, err %v", res.Outcome, res.Reusable, res.Err)
	}
	if !c.demoted || c.nice != 0 {
		t.Fatalf("demoted %v; the child is reused with niceness %d", c.demoted, c.nice)
	}
}

func TestKillReasonsPrintTheTextsTheLogAndTheStatusPageHaveAlwaysShown(t *testing.T) {
	for _, tt := range []struct {
		reason Reason
		text   string
	}{
		{NotKilled, ""},
		{KillTimeout, "timeout"},
		{KillCPU, "cpu"},
		{KillOutput, "max_output"},
		{KillInvalid, "invalid output"},
		{KillAbort, "client abort"},
		{KillIPC, "ipc error"},
		{KillBudget, "daily_cpu"},
		{KillRecycle, "recycle"},
		{KillShutdown, "shutdown"},
		{KillBadStart, "bad start"},
		{KillStartTimeout, "start timeout"},
	} {
		if got := tt.reason.String(); got != tt.text {
			t.Errorf("kill reason %d prints %q, want %q", int(tt.reason), got, tt.text)
		}
	}
	if n := len(reasonText); n != int(NumReasons) {
		t.Errorf("%d kill reason texts for %d reasons", n, NumReasons)
	}
}

func TestOnlyTheWallClockAndCPULimitsCountAsTimeouts(t *testing.T) {
	for r := NotKilled; r < NumReasons; r++ {
		if want := r == KillTimeout || r == KillCPU; r.ForLimit() != want {
			t.Errorf("%q counts as a timeout: %v, want %v", r, r.ForLimit(), want)
		}
	}
}
