// Package sandbox confines a wagi-fcgi child process: the process that runs
// untrusted WebAssembly (compiled to native code by wazero) must not be able
// to do more than the Go runtime, wazero, the WASI host functions and the IPC
// socket need, whatever the machine code it ends up executing.
//
// It has three parts, applied in this order over a child's start:
//
//  1. In the manager, on the thread that forks children (SpawnerThread):
//     every capability leaves the bounding set and the ambient set, so no
//     child can ever hold a capability after its own setup. The only one
//     kept, in the inheritable set, is CAP_SETUID, for step 2.
//  2. In the child, before anything else (DropUser): a child started by a
//     root manager switches to its slot's own real and saved uid and the
//     shared effective uid (see IDs), loses CAP_SETUID with its last root
//     uid, and re-executes itself so that no thread is left with any
//     capability bit, inheritable ones included.
//  3. In the child, after its other hardening and before it serves
//     (InstallFilter): a seccomp filter, synchronised to every thread, that
//     allows the system calls listed in allowlist.go and kills the whole
//     process (SIGSYS) on any other.
//
// RATIONALE.md beside this file argues every allowed system call, says how
// the list was measured, and what the filter deliberately does not stop.
//
// Only linux/amd64 is measured; on other architectures the same names are
// used where they exist, untested.
package sandbox
