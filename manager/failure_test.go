package manager

import (
	"bytes"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/internal/modsource"
	"github.com/wagi-fcgi/wagi-fcgi/manager/internal/runner"
)

// designContract is each row of the HTTP status contract in
// docs/design.md, by its situation, with the failures that are that
// situation in the code.
var designContract = map[string][]failureKind{
	"no route": {noRoute},
	"module trap, missing entrypoint, non-zero exit":     {moduleFailed},
	"module output is not a valid CGI response":          {invalidOutput},
	"wall-clock or per-request CPU limit":                {wallLimit, cpuLimit},
	"daily CPU budget spent":                             {budgetSpent},
	"queue full or queue_timeout":                        {queueFull, concurrencyFull},
	"body over `max_body`":                               {bodyTooLarge},
	"IPFS node unreachable and module not cached":        {sourceUnreachable},
	"CID fetch timeout":                                  {fetchTimeout},
	"fetched bytes are not a valid module, or too large": {unusableModule},
}

// beyondTheDesign are the situations the code answers that the design's
// table does not list, with their statuses and Retry-After.
var beyondTheDesign = []struct {
	kind   failureKind
	status int
	retry  string
	why    string
}{
	{noCIDInPath, 404, "", "a gateway path that names no CID names nothing"},
	{cidNotAllowed, 403, "", "a CID outside [ipfs] allow is refused"},
	{noSuchCID, 404, "", "a gateway CID that IPFS does not have names nothing"},
	{outputTooLarge, 502, "", "output past max_output is the module's fault"},
	{workerFailed, 502, "", "a child that broke the protocol or died is a bad upstream"},
	{spoolFull, 503, "1", "a full body spool is retried shortly"},
	{spoolFailed, 503, "1", "a body that could not be spooled is retried shortly"},
	{loadFailed, 500, "", "a module that could not be loaded for another reason is the server's failure"},
	{restarting, 503, "1", "a restarting server is retried shortly"},
	{clientGone, 499, "", "a client that left is logged as nginx does"},
}

// contractRows reads the rows of the HTTP status contract from
// docs/design.md: situation and answer.
func contractRows(t *testing.T) [][2]string {
	t.Helper()
	doc, err := os.ReadFile("../docs/design.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(doc), "## HTTP status contract\n")
	if !ok {
		t.Fatal("docs/design.md has no HTTP status contract")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	var rows [][2]string
	for _, line := range strings.Split(section, "\n") {
		cells := strings.Split(strings.Trim(line, "| "), " | ")
		if !strings.HasPrefix(line, "| ") || len(cells) != 2 || cells[0] == "situation" {
			continue
		}
		rows = append(rows, [2]string{cells[0], cells[1]})
	}
	if len(rows) < 10 {
		t.Fatalf("only %d rows in the design's status contract", len(rows))
	}
	return rows
}

var leadingStatus = regexp.MustCompile(`^\d{3}`)

func TestEveryRowOfTheDesignsStatusContractIsWhatTheStatusTableAnswers(t *testing.T) {
	for _, row := range contractRows(t) {
		situation, answer := row[0], row[1]
		want, err := strconv.Atoi(leadingStatus.FindString(answer))
		if err != nil {
			t.Fatalf("the design answers %q with %q: no status", situation, answer)
		}
		wantRetry := strings.Contains(answer, "Retry-After")
		t.Run(situation+" answers "+strconv.Itoa(want), func(t *testing.T) {
			kinds, ok := designContract[situation]
			if !ok {
				t.Fatalf("the design's situation %q is not in the test's contract: which failure is it?", situation)
			}
			for _, k := range kinds {
				f := fail(k)
				if f.status() != want {
					t.Errorf("failure %d answers %d, the design %d", k, f.status(), want)
				}
				if hasRetry := statusTable[k].retry != "" || statusTable[k].atReset; hasRetry != wantRetry {
					t.Errorf("failure %d has a Retry-After: %v; the design says %q", k, hasRetry, answer)
				}
			}
		})
	}
}

func TestTheSituationsBeyondTheDesignAnswerTheirOwnStatuses(t *testing.T) {
	for _, tt := range beyondTheDesign {
		t.Run(tt.why, func(t *testing.T) {
			f := fail(tt.kind)
			if f.status() != tt.status || f.retryAfter() != tt.retry {
				t.Errorf("failure %d answers %d with Retry-After %q, want %d with %q", tt.kind, f.status(), f.retryAfter(), tt.status, tt.retry)
			}
		})
	}
}

func TestEveryFailureIsEitherARowOfTheDesignOrListedBeyondIt(t *testing.T) {
	seen := map[failureKind]int{}
	for _, kinds := range designContract {
		for _, k := range kinds {
			seen[k]++
		}
	}
	for _, tt := range beyondTheDesign {
		seen[tt.kind]++
	}
	for k := failureKind(1); k < numFailureKinds; k++ {
		if seen[k] != 1 {
			t.Errorf("failure %d is listed %d times; want once, in the design's rows or beyond them", k, seen[k])
		}
		if statusTable[k].status == 0 {
			t.Errorf("failure %d has no status in the table", k)
		}
		if k != clientGone && statusTable[k].text == "" {
			t.Errorf("failure %d has no text for the client", k)
		}
	}
}

func TestEveryErrorOfAModuleSourceIsASituationOfTheTable(t *testing.T) {
	for _, tt := range []struct {
		f    modsource.Failure
		want failureKind
	}{
		{modsource.Unreachable, sourceUnreachable},
		{modsource.TimedOut, fetchTimeout},
		{modsource.Unusable, unusableModule},
		{modsource.NoSuchCID, noSuchCID},
	} {
		if got := sourceFailures[tt.f]; got != tt.want {
			t.Errorf("source failure %d is failure %d, want %d", tt.f, got, tt.want)
		}
	}
	if len(sourceFailures) != 4 {
		t.Errorf("%d source failures mapped, the test knows 4", len(sourceFailures))
	}
}

// The response's bytes are what nginx and the end-to-end tests see; they
// must not change with the code that decides them.
func TestAFailureIsWrittenAsStatusTextRequestIDAndRetryAfter(t *testing.T) {
	now := time.Date(2026, 1, 2, 23, 59, 0, 0, time.UTC)
	tests := []struct {
		name string
		f    failure
		want string
	}{
		{"no route is a 404 with the request id", fail(noRoute),
			"Status: 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nX-Request-Id: ab-1\r\n\r\n" +
				"404 Not Found: no route matches this path\nrequest id: ab-1\n"},
		{"a spent budget retries at its reset", budgetFailure(account{key: "k", next: now.Add(90 * time.Second)}, now),
			"Status: 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nX-Request-Id: ab-1\r\nRetry-After: 90\r\n\r\n" +
				"503 Service Unavailable: this module has used its CPU time for today\nrequest id: ab-1\n"},
		{"the gateway's spent budget says so", budgetFailure(account{key: gatewayAccount, next: now.Add(1500 * time.Millisecond)}, now),
			"Status: 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nX-Request-Id: ab-1\r\nRetry-After: 2\r\n\r\n" +
				"503 Service Unavailable: the modules of this gateway have used their CPU time for today\nrequest id: ab-1\n"},
		{"an unreachable source retries in 30 seconds with the source's text", failWith(sourceUnreachable, "the module is not cached and the IPFS node is unreachable"),
			"Status: 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nX-Request-Id: ab-1\r\nRetry-After: 30\r\n\r\n" +
				"503 Service Unavailable: the module is not cached and the IPFS node is unreachable\nrequest id: ab-1\n"},
		{"a 499 writes nothing", fail(clientGone), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			tt.f.write(&b, "ab-1")
			if b.String() != tt.want {
				t.Errorf("wrote\n%q\nwant\n%q", b.String(), tt.want)
			}
		})
	}
}

func TestARunsTypedResultIsAnsweredByTheTable(t *testing.T) {
	for _, tt := range []struct {
		name string
		r    runner.Result
		want failureKind // 0: the module's own response
	}{
		{"a module that succeeded answers itself", runner.Result{Outcome: runner.Succeeded}, 0},
		{"a module that succeeded for a client that left answers nobody", runner.Result{Outcome: runner.Succeeded, Aborted: true}, clientGone},
		{"a module that exited non-zero is a 500", runner.Result{Outcome: runner.ModuleFailed}, moduleFailed},
		{"a module that failed for a client that left is still a module failure", runner.Result{Outcome: runner.ModuleFailed, Aborted: true}, moduleFailed},
		{"a child killed for its wall-clock limit is a 504", runner.Result{Outcome: runner.Died, Killed: runner.KillTimeout}, wallLimit},
		{"a child killed for its CPU limit is a 504", runner.Result{Outcome: runner.Died, Killed: runner.KillCPU}, cpuLimit},
		{"a child killed for max_output is a 502", runner.Result{Outcome: runner.Died, Killed: runner.KillOutput}, outputTooLarge},
		{"a child killed for invalid output is a 502", runner.Result{Outcome: runner.Died, Killed: runner.KillInvalid}, invalidOutput},
		{"a child killed for a spent budget is a 503", runner.Result{Outcome: runner.Died, Killed: runner.KillBudget}, budgetSpent},
		{"a child killed because its client left answers nobody", runner.Result{Outcome: runner.Died, Killed: runner.KillAbort}, clientGone},
		{"a child killed for an ipc error is a bad worker", runner.Result{Outcome: runner.Died, Killed: runner.KillIPC}, workerFailed},
		{"a child that crashed is a bad worker", runner.Result{Outcome: runner.Died}, workerFailed},
		{"a run that could not be sent is a bad worker", runner.Result{Outcome: runner.NotSent, Killed: runner.KillIPC}, workerFailed},
		{"a Done that does not decode is a bad worker", runner.Result{Outcome: runner.BadDone, Killed: runner.KillIPC}, workerFailed},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := runFailure(tt.r); got.kind != tt.want {
				t.Errorf("failure %d, want %d", got.kind, tt.want)
			}
		})
	}
}
