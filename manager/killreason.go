package manager

import "github.com/wagi-fcgi/wagi-fcgi/manager/internal/runner"

// killReason is why the manager killed (or retired) a child: the runner's
// reasons for a run's limits, and the pool's own.
type killReason = runner.Reason

const (
	notKilled        = runner.NotKilled
	killTimeout      = runner.KillTimeout
	killCPU          = runner.KillCPU
	killOutput       = runner.KillOutput
	killInvalid      = runner.KillInvalid
	killAbort        = runner.KillAbort
	killIPC          = runner.KillIPC
	killBudget       = runner.KillBudget
	killRecycle      = runner.KillRecycle
	killShutdown     = runner.KillShutdown
	killBadStart     = runner.KillBadStart
	killStartTimeout = runner.KillStartTimeout
)
