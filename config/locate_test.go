package config

import (
	"strings"
	"testing"

	"github.com/BurntSushi/toml"
)

func TestLocateKeys(t *testing.T) {
	tests := []struct {
		name string
		src  string
		key  string // path elements joined with " "
		want int
	}{
		{name: "a top-level key is found", src: "\n\na = 1\n", key: "a", want: 3},
		{name: "a key in a table is found", src: "[t]\n# c\nx = 1\n", key: "t x", want: 3},
		{name: "a table header is found", src: "\n[t]\n", key: "t", want: 2},
		{name: "the second array table element is numbered 1", src: "[[m]]\na = 1\n\n[[m]]\nb = 2\n", key: "m #1 b", want: 5},
		{name: "an array table header is found", src: "[[m]]\n[[m]]\n[[m]]\n", key: "m #2", want: 3},
		{name: "a sub-table of an array table belongs to its last element", src: "[[m]]\n[[m]]\n[m.v]\nx = 1\n", key: "m #1 v x", want: 4},
		{name: "a dotted key is found", src: "\na.b.c = 1\n", key: "a b c", want: 2},
		{name: "a dotted key's parents are found on its line", src: "\na.b.c = 1\n", key: "a b", want: 2},
		{name: "a dotted key with spaces is found", src: "a . b = 1\n", key: "a b", want: 1},
		{name: "a quoted key with a dot is one key", src: "\"a.b\" = 1\n", key: "a.b", want: 1},
		{name: "a quoted key with an escape is found", src: "\"\\u0041\" = 1\n", key: "A", want: 1},
		{name: "a literal quoted key is found", src: "\n'/x' = 1\n", key: "/x", want: 2},
		{name: "a key in an inline table is found", src: "v = { \"/a\" = \"x\", \"/b\" = \"y\" }\n", key: "v /b", want: 1},
		{name: "a key in a multi-line inline table is found", src: "v = {\n  a = 1,\n  b = 2,\n}\n", key: "v b", want: 3},
		{name: "an element of a multi-line array is found", src: "v = [\n  1,\n  # c\n  2,\n]\n", key: "v #1", want: 4},
		{name: "a key in an inline table inside an array is found", src: "m = [\n {a = 1},\n {b = 2},\n]\n", key: "m #1 b", want: 3},
		{name: "lines in a multi-line basic string are counted", src: "s = \"\"\"\nx\ny\"\"\"\nk = 1\n", key: "k", want: 4},
		{name: "lines in a multi-line literal string are counted", src: "s = '''\nx\n'''\nk = 1\n", key: "k", want: 4},
		{name: "an escaped quote does not end a multi-line string", src: "s = \"\"\"a\\\"\"\"\"\nk = 1\n", key: "k", want: 2},
		{name: "a comment with brackets is ignored", src: "# [x]\n# y = 1\ny = 2\n", key: "y", want: 3},
		{name: "a string with a hash is not a comment", src: "a = \"#x\"\nb = 1\n", key: "b", want: 2},
		{name: "a date value with a space is skipped", src: "d = 1979-05-27 07:32:00Z\ne = 1\n", key: "e", want: 2},
		{name: "CRLF line ends are handled", src: "a = 1\r\n\r\nb = 2\r\n", key: "b", want: 3},
		{name: "a header with spaces inside the brackets is found", src: "[ t ]\nx = 1\n", key: "t x", want: 2},
		{name: "a header with a trailing comment is found", src: "[[ m ]] # c\nx = 1\n", key: "m #0 x", want: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			lines := locateKeys(tt.src)
			if got := lines.line(keyPath(strings.Split(tt.key, " "))); got != tt.want {
				t.Errorf("line of %q = %d, want %d (all: %v)", tt.key, got, tt.want, lines)
			}
		})
	}
}

// When the scanner meets something it does not understand, later keys get
// no line rather than a wrong one.
func TestLocateKeysStopsRatherThanGuess(t *testing.T) {
	lines := locateKeys("a = 1\n??? nonsense\nb = 2\n")
	if got := lines.line(keyPath{"a"}); got != 1 {
		t.Errorf("line of a = %d, want 1", got)
	}
	if got := lines.line(keyPath{"b"}); got != 0 {
		t.Errorf("line of b = %d, want 0 (unknown)", got)
	}
}

// The scanner must never panic, whatever it is given; and on documents toml
// accepts, every line it reports is within the document.
func FuzzLocateKeys(f *testing.F) {
	f.Add(designExample)
	f.Add("[[module]]\nroute = \"/\"\nvolumes = { \"/a\" = 'b' }\n")
	f.Add("s = \"\"\"\\\n\"\"\"\nk = \"\\u00e9\"\n")
	f.Add("a = [ { b = [ { c = 1 } ] } ]\n")
	f.Fuzz(func(t *testing.T, src string) {
		n := strings.Count(src, "\n") + 1
		for k, line := range locateKeys(src) {
			if line < 1 || line > n {
				t.Fatalf("key %q on line %d of a %d-line document", k, line, n)
			}
		}
	})
}

// On every document toml accepts, a line the scanner reports for a key
// holds that key's name: the scanner is never off by some lines. Parse
// must not panic either.
func FuzzLocateKeysAgreesWithTOML(f *testing.F) {
	f.Add(designExample)
	f.Add("a.b = 1\n[t]\nx = \"\"\"\n\n\"\"\"\ny = 2\n[t.u]\nz = { p = 1,\n q = 2 }\n")
	f.Add("[[module]]\nroute = \"/\"\nmodule = \"m.wasm\"\n[[module]]\nrute = 1\n")
	f.Fuzz(func(t *testing.T, src string) {
		_, _ = Parse([]byte(src), "f.toml", "/")
		var raw map[string]any
		md, err := toml.Decode(src, &raw)
		if err != nil {
			return
		}
		text := strings.Split(src, "\n")
		lines := locateKeys(src)
		for _, k := range md.Keys() {
			line := lines.line(keyPath(k))
			last := k[len(k)-1]
			if line == 0 || last == "" || strings.IndexFunc(last, func(c rune) bool { return c > 0x7f || !isBareKeyChar(byte(c)) }) >= 0 {
				continue
			}
			if !strings.Contains(text[line-1], last) {
				t.Fatalf("key %q reported on line %d: %q", k, line, text[line-1])
			}
		}
	})
}
