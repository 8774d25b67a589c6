package compiler

import (
	"os/exec"
	"strings"
	"testing"
)

func wat2wasmPath(t *testing.T) string {
	t.Helper()
	p, err := exec.LookPath("wat2wasm")
	if err != nil {
		t.Fatalf("wat2wasm (Debian wabt; tests/setup.sh installs it): %v", err)
	}
	return p
}

func TestConvertTextUnderLimits(t *testing.T) {
	w := wat2wasmPath(t)
	// 4 Mi escapes: wat2wasm needs about 40 MB for it.
	big := `(module (memory 200) (data (i32.const 0) "` + strings.Repeat(`\ab`, 4<<20) + `"))`
	deep := "(module (func " + strings.Repeat("(block ", 2_000_000) + strings.Repeat(")", 2_000_000) + "))"
	cases := []struct {
		name string
		text string
		lim  textLimits
		want string // in the error; "" = converts
	}{
		{"a module converts", `(module (func (export "_start")))`, textLimits{memory: 64 << 20, output: 1 << 20}, ""},
		{"an error names its line and column", "(module\n  (func\n    (i32.bogus)))", textLimits{output: 1 << 20}, "line 3, column 6: unexpected token"},
		{"past compile_memory it is refused as such", big, textLimits{memory: 16 << 20, output: 64 << 20}, "more than compile_memory"},
		{"a binary over the output bound is refused", big, textLimits{output: 1 << 20}, "larger than 1048576 bytes"},
		// Text that crashes wat2wasm is the text's fault and says so:
		// it is not a memory limit the operator should raise.
		{"text that trips an assertion in wat2wasm is not a memory limit", `(module quote "(module)")`, textLimits{memory: 256 << 20, output: 1 << 20}, "wat2wasm crashed on it (signal: aborted)"},
		{"nesting that overflows wat2wasm's stack is refused as a crash", deep, textLimits{memory: 256 << 20, output: 1 << 20}, "wat2wasm crashed on it (signal: segmentation fault)"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			bin, err := convertText(w, []byte(tc.text), tc.lim)
			if tc.want == "" {
				if err != nil || !IsBinary(bin) {
					t.Fatalf("%v, %d bytes", err, len(bin))
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if !strings.Contains(tc.want, "compile_memory") && strings.Contains(err.Error(), "compile_memory") {
				t.Fatalf("error %v blames compile_memory", err)
			}
		})
	}
}

func TestConvertTextWithoutAConverterIsNotTheTextsFault(t *testing.T) {
	_, err := convertText("/nonexistent/wat2wasm", []byte("(module)"), textLimits{output: 1 << 20})
	if err == nil || !strings.Contains(err.Error(), errNoConverter.Error()) {
		t.Fatalf("error %v, want %v", err, errNoConverter)
	}
}
