package compiler

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"unicode/utf8"
)

// MaxResultBytes bounds what the manager reads from a compile process. A
// result lists export names, so it grows with the module; a module whose
// result does not fit is refused.
const MaxResultBytes = 1 << 20

// maxReason bounds the reason of an invalid result.
const maxReason = 2048

const header = "wagi-fcgi-compile 1"

// Status is what became of a compile.
type Status string

const (
	// Valid: compiled into the cache, imports provided; Exports are set.
	Valid Status = "ok"
	// Invalid: the module is not one wagi-fcgi can run (Reason says why).
	// This is a fact about the bytes: it is remembered.
	Invalid Status = "invalid"
	// Failed: the compile process could not do its work for a reason that
	// is not the module's (the cache directory, say); it happens before
	// the bytes are read and is not remembered.
	Failed Status = "error"
)

// Result is what a compile process reports.
type Result struct {
	Key     string // sha256 of the bytes compiled, hex
	Status  Status
	Reason  string   // for Invalid and Failed
	Exports []string // exported function names, for Valid
	// Code is, for Valid, the module IDs wazero gave what was compiled,
	// for ensureTermination 0 and 1 (see CodeIDs): hex, CodeIDCount of
	// them. What was compiled is the module within wagi-fcgi's bounds
	// (wasmbound.Apply), whose bytes the manager never sees.
	Code []string
}

// CodeIDCount is how many code lines a Valid result has: one per value of
// wazero's ensureTermination.
const CodeIDCount = 2

// Encode writes r in the line format Decode reads:
//
//	wagi-fcgi-compile 1
//	key <64 hex digits>
//	ok | invalid "<reason>" | error "<reason>"
//	code <64 hex digits>   (Valid only; exactly CodeIDCount lines, distinct, t = 0 first)
//	export "<name>"        (Valid only; one line per name)
//	end
//
// Strings are Go-quoted, so any bytes in a name stay on one line.
func Encode(w io.Writer, r *Result) error {
	var b bytes.Buffer
	fmt.Fprintf(&b, "%s\nkey %s\n", header, r.Key)
	switch r.Status {
	case Valid:
		b.WriteString("ok\n")
		for _, id := range r.Code {
			fmt.Fprintf(&b, "code %s\n", id)
		}
		for _, e := range r.Exports {
			fmt.Fprintf(&b, "export %s\n", strconv.Quote(e))
		}
	default:
		fmt.Fprintf(&b, "%s %s\n", r.Status, strconv.Quote(CleanReason(r.Reason)))
	}
	b.WriteString("end\n")
	_, err := w.Write(b.Bytes())
	return err
}

// ErrMalformed is returned by Decode for anything that is not a well-formed
// result. The process that wrote it touched untrusted bytes, so a
// malformed result is a failed compile, never something to guess at.
var ErrMalformed = errors.New("malformed compile result")

// Decode reads a result written by Encode, reading at most MaxResultBytes
// from rd, and checks every line of it.
func Decode(rd io.Reader) (*Result, error) {
	data, err := io.ReadAll(io.LimitReader(rd, MaxResultBytes+1))
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if len(data) > MaxResultBytes {
		return nil, fmt.Errorf("%w: more than %d bytes", ErrMalformed, MaxResultBytes)
	}
	return decode(data)
}

func decode(data []byte) (*Result, error) {
	bad := func(format string, a ...any) (*Result, error) {
		return nil, fmt.Errorf("%w: "+format, append([]any{ErrMalformed}, a...)...)
	}
	if !bytes.HasSuffix(data, []byte("end\n")) {
		return bad("no end line")
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 4096), MaxResultBytes+1)
	line := 0
	next := func() (string, bool) {
		if !sc.Scan() {
			return "", false
		}
		line++
		return sc.Text(), true
	}
	if l, ok := next(); !ok || l != header {
		return bad("no %q header", header)
	}
	l, ok := next()
	key, found := strings.CutPrefix(l, "key ")
	if !ok || !found || !isHexKey(key) {
		return bad("line 2: want the module's key")
	}
	r := &Result{Key: key}
	l, ok = next()
	if !ok {
		return bad("no status line")
	}
	status, arg, _ := strings.Cut(l, " ")
	switch Status(status) {
	case Valid:
		if arg != "" {
			return bad("line 3: ok takes no argument")
		}
		r.Status = Valid
	case Invalid, Failed:
		reason, err := unquote(arg, maxReason)
		if err != nil {
			return bad("line 3: reason: %v", err)
		}
		r.Status, r.Reason = Status(status), reason
	default:
		return bad("line 3: unknown status %q", truncate(status, 40))
	}
	seen := map[string]bool{}
	for {
		l, ok = next()
		if !ok {
			return bad("no end line")
		}
		if l == "end" {
			break
		}
		if id, found := strings.CutPrefix(l, "code "); found {
			// Before any export, so that a result is read in one pass
			// and the count is known when the exports start.
			if r.Status != Valid || len(r.Exports) > 0 || len(r.Code) == CodeIDCount || !isHexKey(id) {
				return bad("line %d: unexpected %q", line, truncate(l, 80))
			}
			if slices.Contains(r.Code, id) {
				return bad("line %d: code %s listed twice", line, id)
			}
			r.Code = append(r.Code, id)
			continue
		}
		if r.Status == Valid && len(r.Code) != CodeIDCount {
			return bad("line %d: want %d code lines before %q", line, CodeIDCount, truncate(l, 40))
		}
		q, found := strings.CutPrefix(l, "export ")
		if !found || r.Status != Valid {
			return bad("line %d: unexpected %q", line, truncate(l, 40))
		}
		name, err := unquote(q, MaxResultBytes)
		if err != nil {
			return bad("line %d: export name: %v", line, err)
		}
		if seen[name] {
			return bad("line %d: export %q listed twice", line, truncate(name, 40))
		}
		seen[name] = true
		r.Exports = append(r.Exports, name)
	}
	if sc.Scan() || sc.Err() != nil {
		return bad("data after the end line")
	}
	if r.Status == Valid && len(r.Code) != CodeIDCount {
		return bad("%d code lines, want %d", len(r.Code), CodeIDCount)
	}
	return r, nil
}

// CleanReason makes an error message fit a result: control characters
// become spaces and it is cut to maxReason bytes of valid UTF-8.
func CleanReason(s string) string {
	s = strings.Map(func(c rune) rune {
		if c < 0x20 || c == 0x7f {
			return ' '
		}
		return c
	}, strings.ToValidUTF8(s, "?"))
	if len(s) > maxReason {
		s = strings.ToValidUTF8(s[:maxReason], "")
	}
	return s
}

// Printable reports whether s can be listed in a result: valid UTF-8
// without control characters.
func Printable(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, c := range s {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

// unquote reads one Go-quoted string that must be valid UTF-8 without
// control characters and at most max bytes long.
func unquote(q string, max int) (string, error) {
	s, err := strconv.Unquote(q)
	if err != nil || !strings.HasPrefix(q, `"`) {
		return "", fmt.Errorf("not a quoted string")
	}
	if len(s) > max {
		return "", fmt.Errorf("longer than %d bytes", max)
	}
	if !Printable(s) {
		return "", fmt.Errorf("not printable UTF-8")
	}
	return s, nil
}

func isHexKey(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}
