package testenv_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// wasmModules lists every module tests/build-modules.sh must produce.
func wasmModules() []string {
	return []string{
		// C
		"hello", "env", "echo", "raw", "exit", "stderr", "sleep", "files", "flood", "burn", "stderrflood", "guestbook", "static", "alloc",
		// WAT
		"loop", "trap", "routes", "badroutes", "noheaders", "badimport", "grow", "recurse",
		// Go
		"gohello", "goecho",
	}
}

func TestRepoRoot(t *testing.T) {
	root := testenv.RepoRoot(t)
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("RepoRoot() = %q without go.mod: %v", root, err)
	}
	if _, err := os.Stat(filepath.Join(root, "tests", "build-modules.sh")); err != nil {
		t.Fatalf("RepoRoot() = %q without tests/build-modules.sh: %v", root, err)
	}
}

func TestModulesBuilt(t *testing.T) {
	dir := testenv.Modules(t)
	if want := filepath.Join(testenv.RepoRoot(t), "build", "modules"); dir != want {
		t.Errorf("Modules() = %q, want %q", dir, want)
	}
	for _, name := range wasmModules() {
		b, err := os.ReadFile(testenv.Module(t, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.HasPrefix(b, []byte("\x00asm")) {
			t.Errorf("%s.wasm does not start with the wasm magic bytes", name)
		}
	}
	b, err := os.ReadFile(testenv.Module(t, "notwasm"))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := string(b), "this is not a wasm module\n"; got != want {
		t.Errorf("notwasm.wasm = %q, want %q", got, want)
	}
}
