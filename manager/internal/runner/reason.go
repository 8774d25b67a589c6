package runner

// Reason is why a child was killed (or retired). Its String is what the
// log, the status page and the metrics show; tests and dashboards match
// those texts, so they never change.
type Reason int

const (
	NotKilled Reason = iota
	// The limits of a run, enforced by Run: counted per reason on the
	// status page.
	KillTimeout // the wall-clock limit
	KillCPU     // the per-request CPU limit
	KillOutput  // max_output
	KillInvalid // output that is not a valid CGI response
	KillAbort   // the client went away
	KillIPC     // the child broke the protocol
	KillBudget  // a daily budget ran out during the run
	// Retired: max_requests, or its niceness could not be restored.
	KillRecycle
	// The pool's own reasons.
	KillShutdown     // the pool is closing
	KillBadStart     // it did not start as a child should
	KillStartTimeout // it was not ready within the ready timeout
)

var reasonText = [...]string{
	NotKilled:        "",
	KillTimeout:      "timeout",
	KillCPU:          "cpu",
	KillOutput:       "max_output",
	KillInvalid:      "invalid output",
	KillAbort:        "client abort",
	KillIPC:          "ipc error",
	KillBudget:       "daily_cpu",
	KillRecycle:      "recycle",
	KillShutdown:     "shutdown",
	KillBadStart:     "bad start",
	KillStartTimeout: "start timeout",
}

// NumReasons is one past the last Reason.
const NumReasons = KillStartTimeout + 1

// RunKills are the reasons Run kills a child for, in the order the metrics
// list them.
var RunKills = []Reason{KillTimeout, KillCPU, KillOutput, KillInvalid, KillAbort, KillIPC, KillBudget}

func (r Reason) String() string {
	if r < 0 || int(r) >= len(reasonText) {
		return "unknown"
	}
	return reasonText[r]
}

// ForLimit reports whether the child was killed for the run's wall-clock
// or CPU limit (a timeout on the status page).
func (r Reason) ForLimit() bool { return r == KillTimeout || r == KillCPU }
