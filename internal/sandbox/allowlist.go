package sandbox

import (
	seccomp "github.com/elastic/go-seccomp-bpf"
	"golang.org/x/sys/unix"
)

// allowed are the system calls a child may make with any arguments, once
// its filter is installed. Each is argued in RATIONALE.md; the list is the
// union of what the children made over the end-to-end suite (strace -f -c
// of every child), minus what only process start-up needs.
var allowed = []string{
	// Memory: the Go heap, goroutine stacks, wazero's executable code and
	// linear memories (mmap PROT_EXEC, mprotect), cgo's malloc.
	"mmap", "munmap", "mprotect", "madvise", "brk", "mremap",

	// Threads and scheduling: the Go runtime's Ms, started by glibc
	// (clone is filtered by flags below), their locks and sleeps.
	"futex", "set_robust_list", "rseq", "sched_yield", "sched_getaffinity",
	"gettid", "getpid", "exit", "exit_group",
	"nanosleep", "clock_nanosleep", "clock_gettime", "clock_getres", "gettimeofday",
	"restart_syscall",

	// Signals handled in the process: the runtime's preemption (SIGURG),
	// its handlers and alternate stacks. Sending is filtered below.
	"rt_sigaction", "rt_sigprocmask", "rt_sigreturn", "sigaltstack",

	// Files: modules and the compilation cache (read), volumes (WASI
	// preview1 file and directory calls), stdio and the IPC socket.
	"read", "write", "readv", "writev", "pread64", "pwrite64", "lseek", "close",
	"openat", "openat2", "newfstatat", "fstat", "statx", "getdents64", "readlinkat",
	"mkdirat", "unlinkat", "renameat", "renameat2", "linkat", "symlinkat",
	"utimensat", "ftruncate", "fsync", "fdatasync", "fchmodat", "fallocate", "fadvise64",
	"dup", "dup3",
	// Volume quotas: an exclusive advisory lock on the volume's usage
	// file around every change (child/volumequota.go).
	"flock",

	// Waiting: the Go netpoller (IPC socket, MFS connections), the child's
	// own poll of the IPC socket, WASI poll_oneoff.
	"epoll_create1", "epoll_ctl", "epoll_pwait", "epoll_wait", "eventfd2", "ppoll", "poll",

	// Sockets: the IPC socket, and MFS volumes (HTTP to the manager's MFS
	// proxy): connect out, never bind, listen or accept. socket itself is
	// filtered by family below.
	"connect", "getsockopt", "setsockopt", "getsockname", "getpeername",
	"sendto", "recvfrom", "sendmsg", "recvmsg", "shutdown",

	// WASI random_get, Go's map seeds.
	"getrandom",
}

// conditional are system calls allowed only with some arguments; pid is
// the child's own process id.
func conditional(pid int) []seccomp.NameWithConditions {
	eq := func(arg uint32, v uint64) seccomp.Condition {
		return seccomp.Condition{Argument: arg, Operation: seccomp.Equal, Value: v}
	}
	var out []seccomp.NameWithConditions
	add := func(name string, conds ...seccomp.Condition) {
		out = append(out, seccomp.NameWithConditions{Name: name, Conditions: conds})
	}
	// Threads only: a new process (fork) could escape the manager's
	// clocks and kills. glibc's pthread_create passes CLONE_THREAD.
	add("clone", seccomp.Condition{Argument: 0, Operation: seccomp.BitsSet, Value: unix.CLONE_THREAD})
	// Signals to itself only: the runtime's tgkill(getpid(), tid, SIGURG)
	// and raise. Another process's pid, 0 (the group) or -1 (everyone)
	// is refused.
	add("tgkill", eq(0, uint64(pid)))
	add("kill", eq(0, uint64(pid)))
	// Unix sockets only: MFS volumes reach kubo through the manager's
	// proxy on an abstract unix socket (internal/mfsproxy); no IP at all.
	add("socket", eq(0, unix.AF_UNIX))
	// File descriptor flags and duplication; not F_SETOWN or F_SETSIG,
	// which would make the kernel signal another process on I/O.
	for _, cmd := range []uint64{unix.F_DUPFD, unix.F_GETFD, unix.F_SETFD, unix.F_GETFL, unix.F_SETFL, unix.F_DUPFD_CLOEXEC} {
		add("fcntl", eq(1, cmd))
	}
	// The runtime names its anonymous mappings (PR_SET_VMA); every other
	// prctl (dumpable, parent-death signal, seccomp...) is settled before
	// the filter.
	add("prctl", eq(0, unix.PR_SET_VMA))
	// isatty: terminal attributes are read, never set (TIOCSTI would type
	// into the manager's terminal under `wagi-fcgi run`).
	add("ioctl", eq(1, unix.TCGETS))
	return out
}

// enosys are refused with ENOSYS instead of a kill, because callers fall
// back on ENOSYS: glibc's pthread_create tries clone3 first and uses clone
// (filtered by flags above) when the kernel says it has no clone3; clone3's
// flags are in memory, where a filter cannot read them.
var enosys = []string{"clone3"}
