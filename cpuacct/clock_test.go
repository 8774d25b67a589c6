package cpuacct

import (
	"os"
	"os/exec"
	"testing"
	"time"
)

func TestProcessCPUCountsEveryThreadOfAChild(t *testing.T) {
	// A shell busy-looping for a while: its CPU clock must move by about
	// the time it ran, with sub-millisecond resolution.
	cmd := exec.Command("sh", "-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	first, err := ProcessCPU(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	time.Sleep(50 * time.Millisecond)
	second, err := ProcessCPU(cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if second <= first {
		t.Fatalf("the clock did not move: %s then %s", first, second)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatal(err)
	}
	if _, err := ProcessCPU(cmd.Process.Pid); err == nil {
		t.Fatal("a reaped process still has a clock")
	}
	final := Reaped(cmd.ProcessState)
	if final < second {
		t.Fatalf("rusage %s is below the last clock reading %s", final, second)
	}
}

func TestProcessCPUOfThisProcessIsNotZero(t *testing.T) {
	d, err := ProcessCPU(os.Getpid())
	if err != nil || d <= 0 {
		t.Fatalf("got %s, %v", d, err)
	}
}

func TestReapedOfNothingIsZero(t *testing.T) {
	if d := Reaped(nil); d != 0 {
		t.Fatalf("got %s", d)
	}
}

func BenchmarkProcessCPU(b *testing.B) {
	pid := os.Getpid()
	for i := 0; i < b.N; i++ {
		if _, err := ProcessCPU(pid); err != nil {
			b.Fatal(err)
		}
	}
}

func TestInspectReadsStateMemoryAndStartOfAProcess(t *testing.T) {
	fs, err := ProcFS()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("sleep", "5")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	time.Sleep(50 * time.Millisecond)
	info, err := Inspect(fs, cmd.Process.Pid)
	if err != nil {
		t.Fatal(err)
	}
	if info.State != "S" || info.RSS <= 0 || info.Threads != 1 || time.Since(info.Started) > 10*time.Second || time.Since(info.Started) < 0 {
		t.Fatalf("got %+v", info)
	}
	if _, err := Inspect(fs, 1<<30); err == nil {
		t.Fatal("a pid that does not exist was inspected")
	}
}
