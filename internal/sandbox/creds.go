package sandbox

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// IDs are the user ids one child runs as when the manager is root.
//
// Own is the child's real and saved uid, which no other process has: the
// kernel lets a process signal another only when its real or effective
// uid equals the target's real or saved uid (kill(2)), and ptrace or read
// another's memory only when its uid equals all of the target's uids, so
// with its own real and saved uid no child can signal, trace or read
// another (and not-dumpable and the syscall filter stop the last two as
// well).
//
// Shared is the effective uid, which is also the file system uid: every
// child reads the compilation cache and writes volumes as that one user
// (pool.user), so files one child creates stay usable by the next.
type IDs struct {
	Own    int
	Shared int
}

// Flag is the child's command-line form of ids: "own:shared".
func (ids IDs) Flag() string { return fmt.Sprintf("%d:%d", ids.Own, ids.Shared) }

// ParseIDs reads the form Flag writes.
func ParseIDs(s string) (IDs, error) {
	var ids IDs
	if _, err := fmt.Sscanf(s, "%d:%d", &ids.Own, &ids.Shared); err != nil || ids.Flag() != s {
		return IDs{}, fmt.Errorf("uids %q: want OWN:SHARED", s)
	}
	if ids.Own <= 0 || ids.Shared <= 0 || ids.Own == ids.Shared {
		return IDs{}, fmt.Errorf("uids %q: two distinct non-root uids expected", s)
	}
	return ids, nil
}

// SpawnerThread prepares the calling OS thread, which must be locked and
// used for nothing but starting children, so that no child can hold a
// capability once it has switched to its IDs. Capability sets are
// per-thread and the bounding and inheritable sets pass through fork and
// execve, so doing this once here reaches every child from its first
// instruction, which a child could not do for its own Go runtime threads.
//
// A root thread empties its bounding and ambient sets and keeps only
// CAP_SETUID in its inheritable set: a child executed as uid 0 then starts
// with CAP_SETUID alone (the bounding set no longer grants the rest), uses
// it once in DropUser and loses it there. A thread without CAP_SETPCAP
// (an unprivileged manager) only clears its ambient set: its children
// cannot gain capabilities anyway (no_new_privs, no root uid).
func SpawnerThread() error {
	// EINVAL: a kernel before 4.3 has no ambient set.
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("clear ambient capabilities: %w", err)
	}
	hdr, data, err := capget()
	if err != nil {
		return err
	}
	if os.Geteuid() != 0 {
		return nil
	}
	if !hasCap(data.Effective, unix.CAP_SETPCAP) {
		return errors.New("the manager runs as root without CAP_SETPCAP, so it cannot empty its children's capability bounding set: add CAP_SETPCAP to the service's CapabilityBoundingSet")
	}
	data.Inheritable = [2]uint32{}
	if hasCap(data.Permitted, unix.CAP_SETUID) {
		data.Inheritable[0] = 1 << unix.CAP_SETUID
	}
	if err := capset(hdr, data); err != nil {
		return fmt.Errorf("set inheritable capabilities: %w", err)
	}
	for c := 0; c < 64; c++ {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, uintptr(c), 0, 0, 0); err != nil {
			if errors.Is(err, unix.EINVAL) {
				break // past the kernel's last capability
			}
			return fmt.Errorf("drop capability %d from the bounding set: %w", c, err)
		}
	}
	return nil
}

// DropUser makes the calling child process run as ids. It is the first
// thing a child does, before it reads anything from the manager.
//
// Started as uid 0 (by a root manager, with only CAP_SETUID: see
// SpawnerThread), it sets real and saved uid to ids.Own and effective uid
// to ids.Shared on every thread, which takes every permitted and effective
// capability from every thread, and then executes itself again from a
// thread whose inheritable set it has emptied: execve resets the saved uid
// to the effective one, so the new image, which has no capability at all,
// comes back here and moves its saved uid back to ids.Own, which any
// process may do with its own real uid. On success the first call never
// returns.
//
// Changing the effective uid clears the parent-death signal, so DropUser
// sets it again (SIGKILL, as the manager's spawner did) and makes sure the
// manager did not die in between.
func DropUser(ids IDs) error {
	r, e, s := getresuid()
	switch {
	case r == 0 || e == 0 || s == 0:
		return becomeAndReexec(ids)
	case r == ids.Own && e == ids.Shared && s == ids.Shared:
		if err := syscall.Setresuid(-1, -1, ids.Own); err != nil {
			return fmt.Errorf("saved uid %d: %w", ids.Own, err)
		}
	case r == ids.Own && e == ids.Shared && s == ids.Own:
	default:
		return fmt.Errorf("started with uids %d/%d/%d, want 0 or %d/%d/%d", r, e, s, ids.Own, ids.Shared, ids.Shared)
	}
	if r, e, s := getresuid(); r != ids.Own || e != ids.Shared || s != ids.Own {
		return fmt.Errorf("uids are %d/%d/%d after the switch, want %d/%d/%d", r, e, s, ids.Own, ids.Shared, ids.Own)
	}
	_, data, err := capget()
	if err != nil {
		return err
	}
	if data.Permitted != [2]uint32{} || data.Effective != [2]uint32{} || data.Inheritable != [2]uint32{} {
		return fmt.Errorf("capabilities left after the switch: permitted %x effective %x inheritable %x", data.Permitted, data.Effective, data.Inheritable)
	}
	return nil
}

func becomeAndReexec(ids IDs) error {
	// Everything below must happen on the thread that calls execve.
	runtime.LockOSThread()
	ppid := os.Getppid()
	// syscall.Setresuid applies to every thread of the process.
	if err := syscall.Setresuid(ids.Own, ids.Shared, ids.Own); err != nil {
		return fmt.Errorf("switch to uids %d/%d: %w", ids.Own, ids.Shared, err)
	}
	hdr, data, err := capget()
	if err != nil {
		return err
	}
	data.Inheritable = [2]uint32{}
	if err := capset(hdr, data); err != nil {
		return fmt.Errorf("clear inheritable capabilities: %w", err)
	}
	if err := unix.Prctl(unix.PR_SET_PDEATHSIG, uintptr(syscall.SIGKILL), 0, 0, 0); err != nil {
		return fmt.Errorf("parent-death signal: %w", err)
	}
	if os.Getppid() != ppid {
		return errors.New("the manager exited while the child started")
	}
	err = syscall.Exec("/proc/self/exe", os.Args, os.Environ())
	return fmt.Errorf("re-execute as uid %d: %w", ids.Own, err)
}

// capData is the calling thread's capability sets, two 32-bit words each
// (version 3).
type capData struct {
	Effective, Permitted, Inheritable [2]uint32
}

func capget() (unix.CapUserHeader, *capData, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var raw [2]unix.CapUserData
	if err := unix.Capget(&hdr, &raw[0]); err != nil {
		return hdr, nil, fmt.Errorf("capget: %w", err)
	}
	d := &capData{}
	for i := range 2 {
		d.Effective[i], d.Permitted[i], d.Inheritable[i] = raw[i].Effective, raw[i].Permitted, raw[i].Inheritable
	}
	return hdr, d, nil
}

// capset sets the calling thread's capability sets.
func capset(hdr unix.CapUserHeader, d *capData) error {
	var raw [2]unix.CapUserData
	for i := range 2 {
		raw[i] = unix.CapUserData{Effective: d.Effective[i], Permitted: d.Permitted[i], Inheritable: d.Inheritable[i]}
	}
	return unix.Capset(&hdr, &raw[0])
}

func hasCap(set [2]uint32, c int) bool { return set[c/32]&(1<<(c%32)) != 0 }

func getresuid() (r, e, s int) { return unix.Getresuid() }
