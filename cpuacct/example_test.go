package cpuacct_test

import (
	"fmt"
	"os/exec"

	"github.com/wagi-fcgi/wagi-fcgi/cpuacct"
)

// Charge a child process for the CPU it used between two points, as the
// manager does for each request.
func Example() {
	cmd := exec.Command("sleep", "0.05")
	if err := cmd.Start(); err != nil {
		panic(err)
	}
	start, err := cpuacct.ProcessCPU(cmd.Process.Pid)
	if err != nil {
		panic(err)
	}
	_ = cmd.Wait()
	used := cpuacct.Reaped(cmd.ProcessState) - start
	fmt.Println(used >= 0 && used < 1e9)
	// Output: true
}
