package child

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/sys"

	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
)

// A spare is the instance for a request made before the request comes:
// right after the previous response has gone out, while the child would
// otherwise wait for the manager. Instantiating a Go module (its tables,
// data segments and memory) is about 40% of what a request to it costs the
// child (manager/RATIONALE.md, "Where a Go request's time goes, and the
// spare instance"); with a spare, the request pays only for the guest.
//
// A spare is as fresh as an instance made on demand: no guest code has run
// in it (it is instantiated without its start function), and its memory
// comes from the pool cleared. What differs per request reaches it the
// way it reaches any instance: the environment and the outbound HTTP grant
// through the call's context, stdin, stdout and stderr through the
// engine's readers and writers, which the request resets. Arguments are
// fixed when an instance is made, so a spare is used only for a request
// with the same arguments; volumes are too, so a request with volumes
// neither gets nor leaves one.
//
// A spare is made only for the module a child has just run twice in a row
// with the same arguments (or whose spare the last request used): a spare
// the next request does not use is work thrown away, charged (as idle CPU)
// to the module it was made for. (A route whose query string varies thus
// gets no spares rather than a spare for every request, thrown away.) And only for a module whose last instantiation took at most
// spareMaxInstantiate: a request that comes while a spare is being made
// waits for it, and its time and CPU limits are already running, so a
// module whose instantiation is costly (a hostile one can make it take
// seconds: up to 64 MiB of element and data segments) must not make
// another module's request wait for its spare.
type spareState struct {
	mod  api.Module
	cm   wazero.CompiledModule
	args []string
	key  spareKey

	// What the request just run leaves behind for a spare, if it may
	// have one.
	next     *spareNext
	lastKey  spareKey
	lastArgs []string
	cost     time.Duration // of the last instantiation
}

// spareMaxInstantiate is the longest instantiation (wall time) of a module
// that still gets spares: the Go hello's takes about 0.2 ms, a C
// module's a few µs.
const spareMaxInstantiate = 2 * time.Millisecond

// spareKey names the compiled module a spare is an instance of.
type spareKey struct {
	module string
	pages  uint32
}

type spareNext struct {
	rt   wazero.Runtime
	cm   wazero.CompiledModule
	args []string
	key  spareKey
}

// spareAllowed reports whether a request may use, or leave, a spare.
func spareAllowed(m *ipc.Run) bool {
	return !m.InheritStdio && len(m.Mounts) == 0
}

// takeSpare returns the spare made for m, or nil. A spare that is not for
// m is closed: it must be, before m's module is looked up, since that may
// evict the spare's compiled module.
func (e *engine) takeSpare(ctx context.Context, m *ipc.Run) (api.Module, wazero.CompiledModule) {
	s := &e.spare
	s.next = nil
	if s.mod == nil {
		return nil, nil
	}
	mod := s.mod
	s.mod = nil
	if !spareAllowed(m) || s.key != (spareKey{m.ModuleKey, m.MemoryPages}) || !slices.Equal(s.args, m.Args) {
		_ = mod.Close(ctx)
		return nil, nil
	}
	return mod, s.cm
}

// dropSpare closes the spare, if there is one, and forgets the last
// request: before anything that may compile (and so evict) modules.
func (e *engine) dropSpare(ctx context.Context) {
	s := &e.spare
	if s.mod != nil {
		_ = s.mod.Close(ctx)
		s.mod = nil
	}
	s.next, s.lastKey = nil, spareKey{}
}

// ranRequest records the request just run for the next spare: m ran as an
// instance of cm in rt, from a spare or not.
func (e *engine) ranRequest(m *ipc.Run, rt wazero.Runtime, cm wazero.CompiledModule, usedSpare bool) {
	s := &e.spare
	key := spareKey{m.ModuleKey, m.MemoryPages}
	again := key == s.lastKey && slices.Equal(m.Args, s.lastArgs)
	if spareAllowed(m) && (usedSpare || again) && s.cost <= spareMaxInstantiate {
		s.next = &spareNext{rt: rt, cm: cm, args: slices.Clone(m.Args), key: key}
	}
	s.lastKey, s.lastArgs = key, append(s.lastArgs[:0], m.Args...)
}

// prepareSpare makes the spare the last request left room for. It runs
// after the response has been sent. A module that fails to instantiate gets
// no spare; its next request fails as it would have.
func (e *engine) prepareSpare(ctx context.Context) {
	s := &e.spare
	n := s.next
	s.next = nil
	if n == nil || s.mod != nil {
		return
	}
	cfg := e.base.WithArgs(n.args...).
		WithStdin(&e.stdin).WithStdout(&e.stdout).WithStderr(&e.stderr)
	mod, err := e.instantiate(ctx, n.rt, n.cm, cfg)
	if err != nil {
		return
	}
	s.mod, s.cm, s.args, s.key = mod, n.cm, n.args, n.key
}

// instantiate makes an instance of cm without running its start function,
// and notes how long that took.
func (e *engine) instantiate(ctx context.Context, rt wazero.Runtime, cm wazero.CompiledModule, cfg wazero.ModuleConfig) (api.Module, error) {
	t := time.Now()
	mod, err := rt.InstantiateModule(experimental.WithMemoryAllocator(ctx, e.memory), cm, cfg.WithStartFunctions())
	e.spare.cost = time.Since(t)
	return mod, err
}

// runInstance runs entry in mod, which no guest code has run in yet, then
// closes mod: "_start", or "_initialize" if exported and then entry, with
// the outcomes and errors of wazero's start functions (which this did
// before spares), since errors reach the log.
func runInstance(ctx context.Context, mod api.Module, entry string) ipc.Done {
	defer mod.Close(ctx)
	start := "_initialize"
	if entry == "_start" {
		start = "_start"
	}
	var err error
	if fn := mod.ExportedFunction(start); fn != nil {
		if _, err = fn.Call(ctx); err != nil {
			if exit, ok := err.(*sys.ExitError); !ok {
				err = fmt.Errorf("module[%s] function[%s] failed: %w", mod.Name(), start, err)
			} else if exit.ExitCode() == 0 && entry != "_start" {
				// As a start function, proc_exit(0) in _initialize
				// is no error; entry then finds the module closed.
				err = nil
			}
		}
	}
	if err == nil && entry != "_start" {
		_, err = mod.ExportedFunction(entry).Call(ctx)
	}
	return outcome(err)
}
