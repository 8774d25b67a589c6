package cpuacct

import (
	"fmt"
	"os"
	"time"

	"github.com/prometheus/procfs"
)

// ProcInfo is what /proc tells about a child beyond its CPU clock.
type ProcInfo struct {
	State   string    // one-letter scheduler state: R running, S sleeping, Z zombie, ...
	RSS     int64     // resident memory in bytes
	Threads int       // OS threads
	Started time.Time // when the process started
}

// Inspect reads /proc/<pid>/stat. Its CPU fields have 10 ms ticks, so CPU
// time comes from ProcessCPU instead; this is for state, memory and age.
func Inspect(fs procfs.FS, pid int) (ProcInfo, error) {
	p, err := fs.Proc(pid)
	if err != nil {
		return ProcInfo{}, fmt.Errorf("proc %d: %w", pid, err)
	}
	st, err := p.Stat()
	if err != nil {
		return ProcInfo{}, fmt.Errorf("proc %d: %w", pid, err)
	}
	start, err := st.StartTime() // seconds since the epoch
	if err != nil {
		return ProcInfo{}, fmt.Errorf("proc %d: start time: %w", pid, err)
	}
	sec := int64(start)
	return ProcInfo{
		State:   st.State,
		RSS:     int64(st.ResidentMemory()),
		Threads: st.NumThreads,
		Started: time.Unix(sec, int64((start-float64(sec))*1e9)),
	}, nil
}

// ProcFS opens /proc for Inspect.
func ProcFS() (procfs.FS, error) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		return procfs.FS{}, fmt.Errorf("/proc is not mounted: %w", err)
	}
	return procfs.NewFS("/proc")
}
