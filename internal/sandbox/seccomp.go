package sandbox

import (
	"errors"
	"fmt"
	"os"

	seccomp "github.com/elastic/go-seccomp-bpf"
	"github.com/elastic/go-seccomp-bpf/arch"
	"golang.org/x/sys/unix"
)

// ErrNoSeccomp is returned by InstallFilter on a kernel built without
// seccomp filters. The child then runs without a syscall allowlist; it says
// so in the log (there is no setting to turn the filter off).
var ErrNoSeccomp = errors.New("the kernel has no seccomp filter support (CONFIG_SECCOMP_FILTER): children run without a syscall allowlist")

// Policy is the child's filter for the process pid: the system calls of
// allowed, conditional and enosys; anything else kills the whole process
// with SIGSYS (SECCOMP_RET_KILL_PROCESS), so a compromised child dies
// instead of probing, and the manager answers its request with a 5xx.
// Names the running architecture does not have are left out.
func Policy(pid int) (*seccomp.Policy, error) {
	info, err := arch.GetInfo("")
	if err != nil {
		return nil, err
	}
	known := func(name string) bool { _, ok := info.SyscallNames[name]; return ok }
	allow := seccomp.SyscallGroup{Action: seccomp.ActionAllow}
	for _, n := range allowed {
		if known(n) {
			allow.Names = append(allow.Names, n)
		}
	}
	for _, c := range conditional(pid) {
		if known(c.Name) {
			allow.NamesWithCondtions = append(allow.NamesWithCondtions, c)
		}
	}
	refuse := seccomp.SyscallGroup{Action: seccomp.ActionErrno | seccomp.Action(unix.ENOSYS)}
	for _, n := range enosys {
		if known(n) {
			refuse.Names = append(refuse.Names, n)
		}
	}
	return &seccomp.Policy{
		DefaultAction: seccomp.ActionKillProcess,
		Syscalls:      []seccomp.SyscallGroup{allow, refuse},
	}, nil
}

// InstallFilter loads Policy(os.Getpid()) for every thread of the calling
// process (SECCOMP_FILTER_FLAG_TSYNC; threads made later inherit it). It
// needs no_new_privs, which children inherit from the manager's spawning
// thread and which this sets again for the calling thread. It returns
// ErrNoSeccomp when the kernel has no seccomp filters.
func InstallFilter() error {
	if !seccomp.Supported() {
		return ErrNoSeccomp
	}
	policy, err := Policy(os.Getpid())
	if err != nil {
		return fmt.Errorf("seccomp policy: %w", err)
	}
	err = seccomp.LoadFilter(seccomp.Filter{
		NoNewPrivs: true,
		Flag:       seccomp.FilterFlagTSync,
		Policy:     *policy,
	})
	if err != nil {
		return fmt.Errorf("seccomp: %w", err)
	}
	return nil
}
