package manager

import (
	"context"
	"log/slog"
	"os"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// stuckOutput is a client that stopped reading: after the first write,
// writes block until released.
type stuckOutput struct {
	n       int
	release chan struct{}
}

func (o *stuckOutput) write([]byte) error {
	if o.n++; o.n > 1 {
		<-o.release
	}
	return nil
}

// Behind Apache, which streams, a client that reads slowly blocks the
// manager's write of a module's output, and the limits are checked only
// between frames. The child must still be killed at its wall-clock limit.
func TestAClientThatStopsReadingDoesNotHoldAChildPastItsTimeout(t *testing.T) {
	ctx := context.Background()
	sp := newSpawner()
	defer sp.close()
	// As a pool would start it: as root, as the children's user.
	pool := config.Pool{Children: 1, UIDRange: config.DefaultUIDRange}
	cred, err := childCredential(pool)
	if err != nil {
		t.Fatal(err)
	}
	p, err := startProc(ctx, sp, &procConfig{
		command: []string{os.Args[0], "child"},
		env:     []string{},
		cred:    cred,
		uidBase: pool.UIDRange.First,
		logger:  slog.New(slog.DiscardHandler),
		ready:   30 * time.Second,
	}, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		p.conn.Close()
		<-p.exited
	}()
	lim := config.Default().Limits
	lim.Timeout = 300 * time.Millisecond
	lim.MaxOutput = 0
	run := &ipc.Run{ID: "slow", ModuleKey: "flood", ModulePath: testenv.Module(t, "flood"), MemoryPages: lim.MemoryPages(), Args: []string{"/flood"}}
	out := &stuckOutput{release: make(chan struct{})}
	done := make(chan execResult, 1)
	go func() { done <- execute(ctx, slog.New(slog.DiscardHandler), p, run, lim, out, chargeTo{}, nil) }()
	// The wall-clock limit is what is tested: generous, for a loaded
	// machine.
	select {
	case <-p.exited:
	case <-time.After(30 * time.Second):
		t.Fatal("the child outlived its 300 ms timeout by 30 s while its output was stuck")
	}
	if why := p.killReason(); why != killTimeout {
		t.Fatalf("the child died for %q, want %q", why, killTimeout)
	}
	close(out.release)
	if res := <-done; res.reusable || res.killed != killTimeout {
		t.Fatalf("result: reusable %v, killed %q", res.reusable, res.killed)
	}
}
