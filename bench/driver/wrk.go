package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"
)

// wrkResult is what the table needs from one wrk run.
type wrkResult struct {
	rps      float64
	p50, p99 time.Duration
	requests int
	non2xx   int
	errors   string // wrk's "Socket errors" line, if any
	raw      string

	// CPU used during the measured run per request, by process: nginx,
	// the backend's process tree, and wrk itself.
	cpuNginx, cpuBackend, cpuWrk time.Duration
	cpuManager                   time.Duration // the backend's main process alone
	// switches is the context switches of nginx and the backend's
	// processes during the measured run, per request.
	switches float64
}

var (
	reRPS      = regexp.MustCompile(`(?m)^Requests/sec:\s+([0-9.]+)`)
	rePct      = regexp.MustCompile(`(?m)^\s+(50|99)%\s+([0-9.]+)(us|ms|s|m)\s*$`)
	reRequests = regexp.MustCompile(`(?m)^\s+(\d+) requests in`)
	reNon2xx   = regexp.MustCompile(`(?m)^\s+Non-2xx or 3xx responses:\s+(\d+)`)
	reSockErr  = regexp.MustCompile(`(?m)^\s+Socket errors:\s+(.*)$`)
)

// runWrk runs wrk with the benchmark's settings against url for d.
func (b *bench) runWrk(ctx context.Context, url string, d time.Duration) (wrkResult, error) {
	args := []string{"-t" + strconv.Itoa(b.threads), "-c" + strconv.Itoa(b.conns), "-d" + durArg(d),
		"--timeout", "10s", "--latency", url}
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, b.wrk, args...)
	out, err := cmd.CombinedOutput()
	r := wrkResult{raw: string(out)}
	if cmd.ProcessState != nil {
		r.cpuWrk = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		return r, fmt.Errorf("wrk %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	m := reRPS.FindStringSubmatch(r.raw)
	if m == nil {
		return r, fmt.Errorf("wrk: no Requests/sec in its output:\n%s", out)
	}
	r.rps, _ = strconv.ParseFloat(m[1], 64)
	for _, m := range rePct.FindAllStringSubmatch(r.raw, -1) {
		v, _ := strconv.ParseFloat(m[2], 64)
		unit := map[string]time.Duration{"us": time.Microsecond, "ms": time.Millisecond, "s": time.Second, "m": time.Minute}[m[3]]
		dur := time.Duration(v * float64(unit))
		if m[1] == "50" {
			r.p50 = dur
		} else {
			r.p99 = dur
		}
	}
	if r.p50 == 0 || r.p99 == 0 {
		return r, fmt.Errorf("wrk: no latency distribution in its output:\n%s", out)
	}
	if m := reRequests.FindStringSubmatch(r.raw); m != nil {
		r.requests, _ = strconv.Atoi(m[1])
	}
	if m := reNon2xx.FindStringSubmatch(r.raw); m != nil {
		r.non2xx, _ = strconv.Atoi(m[1])
	}
	if m := reSockErr.FindStringSubmatch(r.raw); m != nil {
		r.errors = strings.TrimSpace(m[1])
	}
	return r, nil
}

// wrkCommand is the command line the table reports.
func (b *bench) wrkCommand(d time.Duration) string {
	return fmt.Sprintf("wrk -t%d -c%d -d%s --timeout 10s --latency URL", b.threads, b.conns, durArg(d))
}

// durArg is d in wrk's syntax: whole seconds (at least one).
func durArg(d time.Duration) string {
	return strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second))) + "s"
}
