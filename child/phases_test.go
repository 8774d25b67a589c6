package child

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tetratelabs/wazero/experimental"
	"github.com/tetratelabs/wazero/sys"
	"golang.org/x/sys/unix"

	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// BenchmarkRequestPhases splits what a request costs the child into the
// phases manager/RATIONALE.md ("Where a Go request's time goes, and the
// spare instance") reports: instantiation (wazero's instance, tables,
// data segments, the memory's allocation), the guest's _start (for a Go module: the runtime's start,
// then package init and main; goempty has an empty main, so the
// difference between it and gohello is the program itself) and the
// release of the linear memory, which proc_exit does inside _start and is
// timed apart here. Page faults and GC cycles are per request too.
//
// Phases are timed on the thread's CPU clock (the goroutine is locked to
// its thread), so other processes on a loaded machine do not count; the
// collector's background work on other threads does not either (gc/op
// says how often it runs); cpu-ns/op is the whole process's CPU time,
// the collector's included.
//
// gohello-madvise is gohello with linear memories reset the other way the
// issue proposed: mapped anonymous memory given back with
// madvise(MADV_DONTNEED) when released, instead of the pool's clearing.
// gohello-cold touches 64 MiB of other memory before each request, as the
// other processes of a server do between a child's requests, so that the
// request starts with cold caches.
func BenchmarkRequestPhases(b *testing.B) {
	for _, name := range []string{"hello", "goempty", "gohello", "gohello-madvise", "gohello-cold"} {
		b.Run(name, func(b *testing.B) {
			name, madvise := strings.CutSuffix(name, "-madvise")
			name, cold := strings.CutSuffix(name, "-cold")
			var other []byte
			if cold {
				other = make([]byte, 64<<20)
			}
			ctx := context.Background()
			e, err := newEngine(ctx, Options{Logger: slog.New(slog.DiscardHandler), MaxModules: 4})
			if err != nil {
				b.Fatal(err)
			}
			defer e.close(ctx)
			rt, cm, err := e.module(ctx, &ipc.Run{ModuleKey: name, ModulePath: testenv.Module(b, name), MemoryPages: 2048})
			if err != nil {
				b.Fatal(err)
			}
			cfg := e.base.WithArgs(name).WithStdout(io.Discard).WithStartFunctions()
			ctx = withEnviron(ctx, []string{"REQUEST_METHOD=GET", "PATH_INFO=/"})
			var alloc experimental.MemoryAllocator = e.memory
			if madvise {
				p := &madvisePool{}
				defer p.unmap()
				alloc = p
			}
			timed := &timedAllocator{inner: alloc}
			actx := experimental.WithMemoryAllocator(ctx, timed)
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			once := func() (inst, start time.Duration) {
				t0 := threadCPU()
				mod, err := rt.InstantiateModule(actx, cm, cfg)
				if err != nil {
					b.Fatal(err)
				}
				t1 := threadCPU()
				_, err = mod.ExportedFunction("_start").Call(ctx)
				if exit := (*sys.ExitError)(nil); err != nil && (!errors.As(err, &exit) || exit.ExitCode() != 0) {
					b.Fatal(err)
				}
				_ = mod.Close(ctx)
				return t1 - t0, threadCPU() - t1
			}
			once()
			timed.free, timed.high = 0, 0
			var inst, start time.Duration
			var ru0, ru1 syscall.Rusage
			var ms0, ms1 runtime.MemStats
			runtime.ReadMemStats(&ms0)
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for j := 0; j < len(other); j += 64 {
					other[j]++
				}
				in, st := once()
				inst += in
				start += st
			}
			b.StopTimer()
			_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
			runtime.ReadMemStats(&ms1)
			n := float64(b.N)
			b.ReportMetric(float64(inst.Nanoseconds())/n, "inst-ns/op")
			b.ReportMetric(float64((start-timed.free).Nanoseconds())/n, "guest-ns/op")
			b.ReportMetric(float64(timed.free.Nanoseconds())/n, "free-ns/op")
			b.ReportMetric(float64(rusageCPU(&ru1)-rusageCPU(&ru0))/n, "cpu-ns/op")
			b.ReportMetric(float64(ru1.Minflt-ru0.Minflt)/n, "minflt/op")
			b.ReportMetric(float64(ms1.NumGC-ms0.NumGC)/n, "gc/op")
			b.ReportMetric(float64(timed.high)/(1<<10), "memKiB")
		})
	}
}

// timedAllocator times the release of linear memories and records the
// largest one.
type timedAllocator struct {
	inner experimental.MemoryAllocator
	free  time.Duration
	high  int
}

func (a *timedAllocator) Allocate(capacity, max uint64) experimental.LinearMemory {
	return &timedMemory{a: a, inner: a.inner.Allocate(capacity, max)}
}

type timedMemory struct {
	a     *timedAllocator
	inner experimental.LinearMemory
	size  int
}

func (m *timedMemory) Reallocate(size uint64) []byte {
	b := m.inner.Reallocate(size)
	m.size = len(b)
	return b
}

func (m *timedMemory) Free() {
	t := threadCPU()
	m.inner.Free()
	m.a.free += threadCPU() - t
	m.a.high = max(m.a.high, m.size)
}

// threadCPU is the CPU time of the calling thread.
func threadCPU() time.Duration {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_THREAD_CPUTIME_ID, &ts); err != nil {
		panic(err)
	}
	return time.Duration(ts.Nano())
}

// rusageCPU is the user and system CPU time in ru.
func rusageCPU(ru *syscall.Rusage) time.Duration {
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// madvisePool keeps mappings of a memory's maximum size for reuse and
// resets them with madvise(MADV_DONTNEED): the kernel gives every page
// touched afterwards a fresh zero page, on a page fault.
type madvisePool struct{ free [][]byte }

func (p *madvisePool) Allocate(capacity, max uint64) experimental.LinearMemory {
	return &madviseMemory{p: p, max: max}
}

type madviseMemory struct {
	p    *madvisePool
	max  uint64
	buf  []byte
	high int
}

func (m *madviseMemory) Reallocate(size uint64) []byte {
	if size > m.max {
		return nil
	}
	if m.buf == nil {
		if n := len(m.p.free); n > 0 && uint64(cap(m.p.free[n-1])) >= m.max {
			m.buf = m.p.free[n-1]
			m.p.free = m.p.free[:n-1]
		} else {
			b, err := unix.Mmap(-1, 0, int(m.max), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
			if err != nil {
				return nil
			}
			m.buf = b[:0]
		}
	}
	m.buf = m.buf[:size]
	m.high = max(m.high, int(size))
	return m.buf
}

func (m *madviseMemory) Free() {
	_ = unix.Madvise(m.buf[:m.high], unix.MADV_DONTNEED)
	m.p.free = append(m.p.free, m.buf[:0])
}

func (p *madvisePool) unmap() {
	for _, b := range p.free {
		_ = unix.Munmap(b[:cap(b)])
	}
}
