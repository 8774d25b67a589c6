package manager

// killReason is why the manager killed (or retired) a child. Its String is
// what the log, the status page and the metrics show; tests and dashboards
// match those texts, so they never change.
type killReason int

const (
	notKilled killReason = iota
	// Limits of a request: counted per reason on the status page.
	killTimeout // the wall-clock limit
	killCPU     // the per-request CPU limit
	killOutput  // max_output
	killInvalid // output that is not a valid CGI response
	killAbort   // the client went away
	killIPC     // the child broke the protocol
	killBudget  // a daily budget ran out during the request
	// The pool's own reasons.
	killRecycle      // retired: max_requests, or its niceness could not be restored
	killShutdown     // the pool is closing
	killBadStart     // it did not start as a child should
	killStartTimeout // it was not ready within the ready timeout
)

var killReasonText = [...]string{
	notKilled:        "",
	killTimeout:      "timeout",
	killCPU:          "cpu",
	killOutput:       "max_output",
	killInvalid:      "invalid output",
	killAbort:        "client abort",
	killIPC:          "ipc error",
	killBudget:       "daily_cpu",
	killRecycle:      "recycle",
	killShutdown:     "shutdown",
	killBadStart:     "bad start",
	killStartTimeout: "start timeout",
}

// requestKills are the reasons a request's child is killed for, in the
// order the metrics list them.
var requestKills = []killReason{killTimeout, killCPU, killOutput, killInvalid, killAbort, killIPC, killBudget}

func (k killReason) String() string {
	if k < 0 || int(k) >= len(killReasonText) {
		return "unknown"
	}
	return killReasonText[k]
}

// forLimit reports whether the child was killed for the request's
// wall-clock or CPU limit (a timeout on the status page, ErrLimit for
// `wagi-fcgi run`).
func (k killReason) forLimit() bool { return k == killTimeout || k == killCPU }
