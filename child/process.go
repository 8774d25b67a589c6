package child

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/wagi-fcgi/wagi-fcgi/internal/sandbox"
)

// ipcFD is the file descriptor of the child's end of the socketpair.
const ipcFD = 3

// Main is the body of `wagi-fcgi child`: it hardens the process, then
// serves the manager on fd 3 until the manager closes it.
func Main(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("child", flag.ContinueOnError)
	cacheDir := fs.String("cache", "", "wazero compilation cache directory")
	addressSpace := fs.Uint64("address-space", 0, "RLIMIT_AS in bytes, soft and hard (0: leave as inherited)")
	uids := fs.String("uids", "", "OWN:SHARED user ids to switch to when started as root (see internal/sandbox)")
	fast := fs.String("fast", "", "CTL,SHARED,PAGE,SLOT,INDEX,BASE: take requests from the web server's connections (descriptors inherited from the manager)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	// One request at a time: one P is enough, and it keeps the Go
	// runtime's own work (GC) on the request's thread, where the
	// manager's CPU clock charges it to the request that caused it.
	runtime.GOMAXPROCS(1)
	if err := dropUser(*uids); err != nil {
		return fmt.Errorf("child: %w", err)
	}
	if err := harden(*addressSpace); err != nil {
		return fmt.Errorf("child: %w", err)
	}
	if *addressSpace > 0 {
		debug.SetMemoryLimit(heapLimit(*addressSpace, vmSize()))
	}
	if _, err := unix.FcntlInt(ipcFD, unix.F_GETFD, 0); err != nil {
		return fmt.Errorf("child: fd %d is not open (a child is started by the manager)", ipcFD)
	}
	conn, err := newBlockingFD(ipcFD)
	if err != nil {
		return fmt.Errorf("child: fd %d: %w", ipcFD, err)
	}
	defer conn.Close()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("pid", os.Getpid())
	if err := confine(log); err != nil {
		return fmt.Errorf("child: %w", err)
	}
	opts := Options{CacheDir: *cacheDir, Logger: log, IPCFD: ipcFD}
	if *fast != "" {
		var f FastFDs
		if _, err := fmt.Sscanf(*fast, "%d,%d,%d,%d,%d,%d", &f.Ctl, &f.Shared, &f.Page, &f.Slot, &f.Index, &f.Base); err != nil {
			return fmt.Errorf("child: --fast %q: %w", *fast, err)
		}
		opts.Fast = &f
	}
	return Serve(ctx, conn, opts)
}

// harden applies what a process running untrusted code should have: no core
// dumps (they could leak request data and fill the disk), and not dumpable,
// so other processes of the same user cannot ptrace it or read its memory.
// (no_new_privs comes from the manager's spawning thread: prctl here would
// set it for one thread only.)
//
// addressSpace, when not 0, becomes the process's RLIMIT_AS, soft and hard:
// the backstop under everything a module can make a child allocate (tables,
// compiled code, the Go heap), where wasmbound and wazero's memory limit
// are the first lines. It is set after the Go runtime has made its startup
// reservations (~1.6 GB of mostly PROT_NONE address space): a limit below
// those only fails later mappings. A child that hits it dies with "fatal
// error: out of memory", and the manager answers for it and replaces it.
func harden(addressSpace uint64) error {
	if addressSpace > 0 {
		if err := unix.Setrlimit(unix.RLIMIT_AS, &unix.Rlimit{Cur: addressSpace, Max: addressSpace}); err != nil {
			return fmt.Errorf("rlimit as: %w", err)
		}
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{Cur: 0, Max: 0}); err != nil {
		return fmt.Errorf("rlimit core: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("dumpable: %w", err)
	}
	return nil
}

// nonHeapReserve is the address space kept out of the Go heap's share of
// RLIMIT_AS: compiled guest code (mapped outside the heap), thread stacks,
// malloc arenas of new threads.
const nonHeapReserve = 256 << 20

// heapLimit is the Go memory limit for a child with RLIMIT_AS addressSpace
// that has vm bytes mapped when it starts. Without one, the garbage
// collector lets the heap double before it collects (GOGC=100), and a
// child whose requests allocate large linear memories dies of RLIMIT_AS
// with most of its heap dead: measured with memory = "1GiB" and the
// default child_memory (5 GiB), a child failed to allocate 1.2 GB with 3.3
// GB of heap in use, where one request lives in under 2.5 GB. With the
// limit the collector runs before the heap reaches what the address space
// allows, and only live memory can kill the child.
func heapLimit(addressSpace, vm uint64) int64 {
	const floor = 64 << 20
	if addressSpace < vm+nonHeapReserve+floor {
		return floor
	}
	return int64(addressSpace - vm - nonHeapReserve)
}

// vmSize returns this process's mapped address space (VmSize), or 0 if it
// cannot be read.
func vmSize() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "VmSize:"); ok {
			kb, err := strconv.ParseUint(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64)
			if err != nil {
				return 0
			}
			return kb << 10
		}
	}
	return 0
}

// dropUser switches a child started as root to its own uids (see
// sandbox.DropUser; the first call re-executes the child). A child never
// runs guest code as root: started as root without uids, it refuses.
func dropUser(uids string) error {
	if uids == "" {
		if r, e, s := unix.Getresuid(); r == 0 || e == 0 || s == 0 {
			return errors.New("a child does not run as root (the manager starts it with --uids)")
		}
		return nil
	}
	ids, err := sandbox.ParseIDs(uids)
	if err != nil {
		return err
	}
	return sandbox.DropUser(ids)
}

// confine installs the syscall allowlist on every thread. It comes last,
// after everything that needs more than serving does, and before the first
// frame from the manager, so no guest code ever runs without it. A kernel
// without seccomp filters is said loudly in the log on every start, not
// refused: the other walls still stand.
func confine(log *slog.Logger) error {
	err := sandbox.InstallFilter()
	if errors.Is(err, sandbox.ErrNoSeccomp) {
		log.Error("child runs WITHOUT a syscall allowlist", "err", err)
		return nil
	}
	return err
}
