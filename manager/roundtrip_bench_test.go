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

// BenchmarkChildRoundTrip is the manager↔child hop alone: a Run frame for
// the C hello module to a real child (this test binary, see TestMain),
// the child's output and Done frames back, with the manager's limits
// watched as in production (execute), but no FastCGI, routing or logging.
// The guest's run is part of it; BenchmarkRunHello in package child is
// that part alone.
func BenchmarkChildRoundTrip(b *testing.B) {
	ctx := context.Background()
	sp := newSpawner()
	defer sp.close()
	p, err := startProc(ctx, sp, &procConfig{
		command:  []string{os.Args[0], "child"},
		env:      []string{},
		cacheDir: b.TempDir(),
		logger:   slog.New(slog.DiscardHandler),
		ready:    30 * time.Second,
	}, 0)
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		p.conn.Close() // the child exits when its socket closes
		<-p.exited
	}()
	lim := config.Default().Limits
	run := &ipc.Run{
		ID:          "bench",
		ModuleKey:   "hello",
		ModulePath:  testenv.Module(b, "hello"),
		MemoryPages: lim.MemoryPages(),
		Args:        []string{"/hello"},
		Env:         []string{"REQUEST_METHOD=GET", "PATH_INFO=/hello", "SERVER_PROTOCOL=HTTP/1.1"},
	}
	log := slog.New(slog.DiscardHandler)
	once := func() {
		res := execute(ctx, log, p, run, lim, discardOutput{}, chargeTo{}, nil)
		if res.err != nil || !res.reusable {
			b.Fatalf("run on the child: %v (status %d)", res.err, res.fail.status())
		}
	}
	once() // compile and cache the module in the child
	b.ReportAllocs()
	for b.Loop() {
		once()
	}
}
