// Package testenv gives tests of every package access to the repository
// root and to the WebAssembly test modules of tests/testdata/modules, built
// by tests/build-modules.sh into <root>/build/modules.
package testenv

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"
)

// RepoRoot returns the directory that holds go.mod, found by walking up from
// the test's working directory.
func RepoRoot(t testing.TB) string {
	t.Helper()
	root, err := findRoot()
	if err != nil {
		t.Fatalf("testenv: %v", err)
	}
	return root
}

func findRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod found above the working directory")
		}
		dir = parent
	}
}

// buildResult is the outcome of the one build-modules.sh run of this process.
type buildResult struct {
	dir    string
	output []byte
	err    error
}

// buildOnce runs tests/build-modules.sh at most once per test process.
// It is package-level state on purpose (an exception to our rule): the result
// is a process-wide cache of an idempotent, side-effect-free (apart from the
// build directory) step, and every test in the process must see the same
// result. The script itself serialises concurrent processes with flock.
var buildOnce = sync.OnceValue(func() buildResult {
	root, err := findRoot()
	if err != nil {
		return buildResult{err: err}
	}
	dir := filepath.Join(root, "build", "modules")
	cmd := exec.Command("bash", filepath.Join(root, "tests", "build-modules.sh"), dir)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	return buildResult{dir: dir, output: out, err: err}
})

// Modules builds the test modules (once per process; later builds only redo
// what changed) and returns the directory holding <name>.wasm. It fails the
// test, with the build script's output, when the build fails.
func Modules(t testing.TB) string {
	t.Helper()
	r := buildOnce()
	if r.err != nil {
		t.Fatalf("testenv: building test modules (tests/build-modules.sh) failed: %v\n%s", r.err, r.output)
	}
	return r.dir
}

// Module returns the path of the built module <name>.wasm (for example
// Module(t, "hello")), failing the test if it is absent.
func Module(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(Modules(t), name+".wasm")
	if _, err := os.Stat(p); err != nil {
		t.Fatalf("testenv: module %q: %v", name, err)
	}
	return p
}
