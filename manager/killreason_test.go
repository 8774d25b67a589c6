package manager

import "testing"

// The texts of kill reasons are in log lines, on the status page and in
// the metrics' labels, where people and tests match them: a typed reason
// must print exactly what the bare strings did.
func TestKillReasonsPrintTheTextsTheLogAndTheStatusPageHaveAlwaysShown(t *testing.T) {
	for _, tt := range []struct {
		reason killReason
		text   string
	}{
		{notKilled, ""},
		{killTimeout, "timeout"},
		{killCPU, "cpu"},
		{killOutput, "max_output"},
		{killInvalid, "invalid output"},
		{killAbort, "client abort"},
		{killIPC, "ipc error"},
		{killBudget, "daily_cpu"},
		{killRecycle, "recycle"},
		{killShutdown, "shutdown"},
		{killBadStart, "bad start"},
		{killStartTimeout, "start timeout"},
	} {
		if got := tt.reason.String(); got != tt.text {
			t.Errorf("kill reason %d prints %q, want %q", int(tt.reason), got, tt.text)
		}
	}
	if n := len(killReasonText); n != int(killStartTimeout)+1 {
		t.Errorf("%d kill reason texts for %d reasons", n, int(killStartTimeout)+1)
	}
}

func TestOnlyTheWallClockAndCPULimitsCountAsTimeouts(t *testing.T) {
	for r := notKilled; int(r) < len(killReasonText); r++ {
		if want := r == killTimeout || r == killCPU; r.forLimit() != want {
			t.Errorf("%q counts as a timeout: %v, want %v", r, r.forLimit(), want)
		}
	}
}
