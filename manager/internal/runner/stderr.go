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

// LogStderr logs a whole request's guest stderr, as a run's is logged
// (for requests the manager did not hold: the fast path's).
func LogStderr(log *slog.Logger, p []byte) {
	if len(p) > 64<<10+stderrSlack {
		p = p[:64<<10+stderrSlack]
	}
	var st stderrLog
	logStderr(log, &st, p, false)
	logStderr(log, &st, nil, true)
}
