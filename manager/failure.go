package manager

import (
	"io"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/internal/modsource"
	"github.com/wagi-fcgi/wagi-fcgi/internal/wagi"
	"github.com/wagi-fcgi/wagi-fcgi/manager/internal/runner"
)

// failureKind is a situation in which wagi-fcgi answers a request itself
// instead of the module: the rows of the HTTP status contract in
// docs/design.md, and the few the code has besides (the gateway's, a
// client that left, a server that is restarting). statusTable gives each
// its status; nothing else in the manager decides one.
type failureKind int

const (
	noRoute           failureKind = iota + 1 // no route matches the path
	noCIDInPath                              // a gateway path without a CID
	cidNotAllowed                            // a gateway CID outside [ipfs] allow
	noSuchCID                                // a gateway CID that IPFS does not have
	moduleFailed                             // a trap, a missing entrypoint, a non-zero exit
	invalidOutput                            // output that is not a valid CGI response
	outputTooLarge                           // output past max_output
	workerFailed                             // the child broke the protocol or died
	wallLimit                                // the wall-clock limit (timeout)
	cpuLimit                                 // the per-request CPU limit
	budgetSpent                              // a daily CPU budget (the module's or the gateway's)
	queueFull                                // no child within queue_timeout, or the queue full
	concurrencyFull                          // no max_concurrency slot within queue_timeout
	bodyTooLarge                             // a body over max_body
	spoolFull                                // the body spool at spool_size
	spoolFailed                              // the body could not be spooled
	sourceUnreachable                        // the node, registry or server is down, the module not cached
	fetchTimeout                             // the module or directory did not arrive within fetch_timeout
	unusableModule                           // fetched bytes that are not a valid module, or too large
	loadFailed                               // the module could not be loaded, for no reason above
	restarting                               // the manager is draining, or its compiles were stopped
	clientGone                               // the client left: nothing is answered
	numFailureKinds
)

// statusTable is the status contract: the status, the Retry-After and the
// default public text of each situation. Texts are short and name no
// detail (those go to the log with the request id).
var statusTable = [numFailureKinds]struct {
	status int
	// retry is a fixed Retry-After in seconds; atReset: the seconds
	// until the spent budget resets.
	retry   string
	atReset bool
	text    string
}{
	noRoute:           {status: 404, text: "no route matches this path"},
	noCIDInPath:       {status: 404, text: "no CID in this gateway path"},
	cidNotAllowed:     {status: 403, text: "this CID is not allowed on this gateway"},
	noSuchCID:         {status: 404, text: "no such module in IPFS"},
	moduleFailed:      {status: 500, text: "the module failed"},
	invalidOutput:     {status: 502, text: "the module's output is not a valid CGI response"},
	outputTooLarge:    {status: 502, text: "the module's output is too large"},
	workerFailed:      {status: 502, text: "the worker process failed"},
	wallLimit:         {status: 504, text: "the module ran past its time limit"},
	cpuLimit:          {status: 504, text: "the module used more CPU time than allowed"},
	budgetSpent:       {status: 503, atReset: true, text: "this module has used its CPU time for today"},
	queueFull:         {status: 503, retry: "1", text: "all workers are busy; try again shortly"},
	concurrencyFull:   {status: 503, retry: "1", text: "this module is already using all the workers it may (max_concurrency); try again shortly"},
	bodyTooLarge:      {status: 413, text: "the request body is too large"},
	spoolFull:         {status: 503, retry: "1", text: "the server holds too many request bodies; try again shortly"},
	spoolFailed:       {status: 503, retry: "1", text: "the request body could not be stored; try again shortly"},
	sourceUnreachable: {status: 503, retry: "30", text: "the module is not cached and its source is unreachable"},
	fetchTimeout:      {status: 504, text: "fetching the module timed out"},
	unusableModule:    {status: 502, text: "the module is not a valid WebAssembly module for wagi-fcgi"},
	loadFailed:        {status: 500, text: "the module could not be loaded"},
	restarting:        {status: 503, retry: "1", text: "the server is restarting; try again"},
	clientGone:        {status: 499},
}

// sourceFailures are the situations of a module source's errors.
var sourceFailures = map[modsource.Failure]failureKind{
	modsource.Unreachable: sourceUnreachable,
	modsource.TimedOut:    fetchTimeout,
	modsource.Unusable:    unusableModule,
	modsource.NoSuchCID:   noSuchCID,
}

// failure is a request that wagi-fcgi answers itself. The zero value is no
// failure.
type failure struct {
	kind failureKind
	// text, when not "", replaces the table's text: it says which
	// budget, which limit, which source.
	text string
	// resetIn is the Retry-After of a budgetSpent: seconds until the
	// budget resets.
	resetIn string
}

// fail is a failure of kind with the table's text.
func fail(kind failureKind) failure { return failure{kind: kind} }

// failWith is a failure of kind with its own text.
func failWith(kind failureKind, text string) failure { return failure{kind: kind, text: text} }

// budgetFailure is the answer while account a is spent, as of now.
func budgetFailure(a account, now time.Time) failure {
	return failure{kind: budgetSpent, text: budgetMessage(a), resetIn: retryAfter(now, a.next)}
}

func (f failure) failed() bool { return f.kind != 0 }

func (f failure) status() int { return statusTable[f.kind].status }

// public is the text of the body.
func (f failure) public() string {
	if f.text != "" {
		return f.text
	}
	return statusTable[f.kind].text
}

// retryAfter is the Retry-After header's value, or "" for none.
func (f failure) retryAfter() string {
	if statusTable[f.kind].atReset {
		return f.resetIn
	}
	return statusTable[f.kind].retry
}

// write is the only writer of a response that wagi-fcgi produces itself: a
// status, a short plain-text body and the request id, which the log line
// carries too, and Retry-After where the table has one. Details stay in the
// log. A client that left is answered nothing.
func (f failure) write(w io.Writer, id string) {
	if f.kind == clientGone {
		return
	}
	_, _ = w.Write(wagi.AppendErrorResponse(nil, id, f.status(), f.public(), f.retryAfter()))
}

func statusText(code int) string { return wagi.StatusText(code) }

// killFailures are the situations of a run whose child was killed for one
// of its limits; a child killed for anything else, or dead of its own
// accord, is a workerFailed.
var killFailures = map[killReason]failureKind{
	killTimeout: wallLimit,
	killCPU:     cpuLimit,
	killOutput:  outputTooLarge,
	killInvalid: invalidOutput,
	killBudget:  budgetSpent, // the caller knows which budget, and when it resets
	killAbort:   clientGone,
}

// runFailure is the answer to a run that ended as r says; the zero
// failure for a module that succeeded for a client still there.
func runFailure(r runner.Result) failure {
	switch r.Outcome {
	case runner.Succeeded:
		if r.Aborted {
			return fail(clientGone)
		}
		return failure{}
	case runner.ModuleFailed:
		return fail(moduleFailed)
	case runner.Died:
		if kind, ok := killFailures[r.Killed]; ok {
			return fail(kind)
		}
	}
	return fail(workerFailed) // not sent, a bad Done, a crash, a broken protocol
}
