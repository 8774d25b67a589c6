package compiler

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// WebAssembly text (.wat) modules are converted to binary here, in the
// sandboxed compile process, by wabt's wat2wasm: no maintained pure-Go
// text compiler is served by the Go module proxy (see RATIONALE.md). The
// manager only tells text from binary by the first four bytes, as it
// always did, and never parses the conversion (its module store hashes
// it, read without following links, to find its compiled code).
//
// wat2wasm runs as a child of this process, under the same limits:
// address space (compile_memory, set on it before it is given a byte of
// the text, which it reads from stdin), CPU (compile_cpu), the manager's
// wall clock (it kills the whole process group), and PR_SET_PDEATHSIG. It
// is waited for, so its CPU is in the rusage the manager reads when it
// reaps this process, and is charged like the compile's.

// textDir is the directory of the compilation cache where the compile
// process keeps the binaries it made of text modules. The cache is the
// compile process's to write and the children's to read, which is exactly
// what these files need.
const textDir = "wat2wasm"

// IsBinary reports whether b is a WebAssembly binary module (it starts
// with the \0asm magic). Anything else is taken for WebAssembly text.
func IsBinary(b []byte) bool {
	return len(b) >= 4 && string(b[:4]) == "\x00asm"
}

// TextBinaryPath is where the compile process writes the binary it made
// of the text module whose bytes hash to key; children load that file.
func TextBinaryPath(cacheDir, key string) string {
	return filepath.Join(cacheDir, textDir, key+".wasm")
}

// textLimits bound one conversion.
type textLimits struct {
	memory int64         // RLIMIT_AS of wat2wasm; 0 = none
	cpu    time.Duration // its CPU; 0 = none
	output int64         // the largest binary accepted
}

// convertText turns WebAssembly text into a binary with the wat2wasm at
// path. An error is the text's fault (it is remembered as bad), except
// errNoConverter's.
func convertText(path string, text []byte, lim textLimits) ([]byte, error) {
	cmd := exec.Command(path, "--output=-", "-")
	cmd.Env = []string{}
	cmd.Dir = "/"
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errNoConverter, err)
	}
	out := &limitBuffer{limit: lim.output}
	stderr := &limitBuffer{limit: 4096}
	cmd.Stdout, cmd.Stderr = out, stderr
	// Killed with this process, whatever kills it. Pdeathsig is tied to
	// the thread that forks, which must therefore live as long as
	// wat2wasm: lock it until wat2wasm is reaped.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("%w: start %s: %v", errNoConverter, path, err)
	}
	// The limits are set before wat2wasm has a byte of the text: until
	// then it is blocked reading stdin, whatever it allocated is its own.
	pid := cmd.Process.Pid
	var lerr error
	if lim.memory > 0 {
		lerr = unix.Prlimit(pid, unix.RLIMIT_AS, &unix.Rlimit{Cur: uint64(lim.memory), Max: uint64(lim.memory)}, nil)
	}
	if lim.cpu > 0 && lerr == nil {
		secs := uint64((lim.cpu + time.Second - 1) / time.Second)
		lerr = unix.Prlimit(pid, unix.RLIMIT_CPU, &unix.Rlimit{Cur: secs, Max: secs + 1}, nil)
	}
	if lerr != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("%w: limits of wat2wasm: %v", errNoConverter, lerr)
	}
	go func() {
		_, _ = stdin.Write(text)
		_ = stdin.Close()
	}()
	werr := cmd.Wait()
	ps := cmd.ProcessState
	cpu := ps.UserTime() + ps.SystemTime()
	ws, _ := ps.Sys().(syscall.WaitStatus)
	switch {
	case ws.Signaled() && (ws.Signal() == syscall.SIGXCPU || ws.Signal() == syscall.SIGKILL) || lim.cpu > 0 && cpu > lim.cpu:
		return nil, fmt.Errorf("converting WebAssembly text used more than compile_cpu (%s) of CPU", lim.cpu)
	case strings.Contains(stderr.String(), "bad_alloc"):
		// What RLIMIT_AS makes of wat2wasm: std::bad_alloc, then abort.
		return nil, fmt.Errorf("converting WebAssembly text needed more than compile_memory (%d bytes): cannot allocate memory", lim.memory)
	case ws.Signaled():
		// Any other abort is a failed assertion (text wabt does not
		// expect, e.g. `(module quote ...)`), a segfault is deep nesting
		// overflowing its stack: the text's doing, not a limit to raise.
		msg := fmt.Sprintf("not a WebAssembly binary (no \\0asm magic), and as WebAssembly text wat2wasm crashed on it (signal: %v)", ws.Signal())
		if first := strings.TrimSpace(strings.SplitN(stderr.String(), "\n", 2)[0]); first != "" {
			msg += ": " + first
		}
		return nil, errors.New(msg)
	case out.over:
		return nil, fmt.Errorf("the binary made of the WebAssembly text is larger than %d bytes", lim.output)
	case werr != nil:
		return nil, fmt.Errorf("not a WebAssembly binary (no \\0asm magic), and as WebAssembly text it does not convert: %s", textError(stderr.Bytes(), werr))
	case !IsBinary(out.Bytes()):
		return nil, errors.New("wat2wasm wrote no WebAssembly binary")
	}
	return out.Bytes(), nil
}

// errNoConverter is a conversion that could not be tried: not the text's
// fault, so the compile is Failed, not Invalid.
var errNoConverter = errors.New("cannot run wat2wasm")

// textError is wat2wasm's first error, "-:LINE:COL: error: ..." read as
// "line LINE, column COL: ...", and how many lines followed it.
func textError(stderr []byte, err error) string {
	lines := strings.Split(strings.TrimSpace(string(stderr)), "\n")
	first := strings.TrimSpace(lines[0])
	if first == "" {
		return err.Error()
	}
	if rest, ok := strings.CutPrefix(first, "-:"); ok {
		var line, col int
		var msg string
		if i := strings.Index(rest, ": "); i > 0 {
			if n, _ := fmt.Sscanf(rest[:i], "%d:%d", &line, &col); n == 2 {
				msg = strings.TrimPrefix(rest[i+2:], "error: ")
				first = fmt.Sprintf("line %d, column %d: %s", line, col, msg)
			}
		}
	}
	return first
}

// writeTextBinary stores the binary made of the text module with key, for
// children to load (readable by all once shareCache has run).
func writeTextBinary(cacheDir, key string, bin []byte) error {
	dir := filepath.Join(cacheDir, textDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	f, err := os.CreateTemp(dir, key+".*.tmp")
	if err != nil {
		return err
	}
	_, err = f.Write(bin)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), TextBinaryPath(cacheDir, key))
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}

// limitBuffer keeps up to limit bytes and notes that more came. (It does
// not embed bytes.Buffer: os/exec would use its ReadFrom and bypass Write.)
type limitBuffer struct {
	buf   bytes.Buffer
	limit int64
	over  bool
}

func (b *limitBuffer) Write(p []byte) (int, error) {
	if room := b.limit - int64(b.buf.Len()); int64(len(p)) > room {
		b.over = true
		b.buf.Write(p[:max(room, 0)])
		return len(p), nil
	}
	return b.buf.Write(p)
}

func (b *limitBuffer) Bytes() []byte  { return b.buf.Bytes() }
func (b *limitBuffer) String() string { return b.buf.String() }
