package runner

import (
	"bytes"
	"fmt"
	"log/slog"
)

const (
	// stderrSlack is what a child may send past its stderr cap: its
	// note that the rest was dropped.
	stderrSlack = 256
	// maxStderrLine bounds one logged line of guest stderr: a longer one
	// is logged in pieces, so an endless line costs the manager no more.
	maxStderrLine = 4 << 10
	// maxStderrLines bounds the guest stderr lines logged per request;
	// the rest are counted in one line.
	maxStderrLines = 200
)

// logStderr logs guest stderr line by line. A partial line is kept until
// its newline arrives or the request ends.
func logStderr(log *slog.Logger, st *stderrLog, p []byte, end bool) {
	carry := &st.carry
	*carry = append(*carry, p...)
	for {
		i := bytes.IndexByte(*carry, '\n')
		if i < 0 {
			break
		}
		st.line(log, string(bytes.TrimRight((*carry)[:i], "\r")))
		*carry = (*carry)[i+1:]
	}
	for len(*carry) >= maxStderrLine {
		st.line(log, string((*carry)[:maxStderrLine]))
		*carry = (*carry)[maxStderrLine:]
	}
	if end && len(*carry) > 0 {
		st.line(log, string(*carry))
		*carry = nil
	}
	if end && st.dropped > 0 {
		log.Warn("module stderr", "dropped_lines", st.dropped, "last", st.last,
			"note", fmt.Sprintf("only the first %d lines of a request are logged, and its last", maxStderrLines))
		st.dropped, st.last = 0, ""
	}
}

// stderrLog is a request's guest stderr on its way to the log.
type stderrLog struct {
	carry   []byte // a line not ended yet
	lines   int    // lines logged
	dropped int    // lines past maxStderrLines
	last    string // the last of them: how a flood ended
}

// line logs one line, unless the request has logged maxStderrLines: 64 KiB
// of empty lines would otherwise be 65,536 log records, costing the manager
// CPU that nobody pays for and crowding out its own lines.
func (st *stderrLog) line(log *slog.Logger, s string) {
	if st.lines >= maxStderrLines {
		st.dropped++
		st.last = s
		return
	}
	st.lines++
	log.Warn("module stderr", "line", s)
}

// StderrLog logs one request's guest stderr as it arrives in pieces, with
// the bounds of a run's (for requests the manager did not hold: the fast
// path's). End logs what is left.
type StderrLog struct {
	log *slog.Logger
	st  stderrLog
	n   int
}

// NewStderrLog starts the stderr log of one request.
func NewStderrLog(log *slog.Logger) *StderrLog { return &StderrLog{log: log} }

// Write logs p's complete lines; bytes past the cap are dropped.
func (l *StderrLog) Write(p []byte) {
	room := 64<<10 + stderrSlack - l.n
	if room <= 0 {
		return
	}
	p = p[:min(len(p), room)]
	l.n += len(p)
	logStderr(l.log, &l.st, p, false)
}

// End logs a last partial line and what was dropped.
func (l *StderrLog) End() { logStderr(l.log, &l.st, nil, true) }
