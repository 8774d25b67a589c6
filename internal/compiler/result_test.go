package compiler

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

const key = "f9e9cfd9bf0ffde69e45cec93e726f166680276418e9de48859da545084e1e30"

// code are the module IDs of what a Valid result says was compiled.
var code = []string{
	"1d1e3a0c6a3c4cfb7d0f5f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e",
	"9e8d7c6b5a49382716f5e4d3c2b1a0f9e8d7c6b5a49382716f5e4d3c2b1a0f9e",
}

func TestResultsRoundTripThroughEncodeAndDecode(t *testing.T) {
	for _, r := range []*Result{
		{Key: key, Status: Valid, Code: code, Exports: []string{"_routes", "_start", "ünïcode name"}},
		{Key: key, Status: Valid, Code: code},
		{Key: key, Status: Invalid, Reason: "imports env.f, which wagi-fcgi does not provide"},
		{Key: zeroKey, Status: Failed, Reason: "open module: no such file"},
	} {
		var b bytes.Buffer
		if err := Encode(&b, r); err != nil {
			t.Fatal(err)
		}
		got, err := Decode(&b)
		if err != nil {
			t.Fatalf("%+v: %v", r, err)
		}
		if !reflect.DeepEqual(got, r) {
			t.Errorf("got %+v, want %+v", got, r)
		}
	}
}

func TestAReasonIsMadeOneBoundedLine(t *testing.T) {
	var b bytes.Buffer
	long := "line one\nline two\x00" + strings.Repeat("é", 3000)
	if err := Encode(&b, &Result{Key: key, Status: Invalid, Reason: long}); err != nil {
		t.Fatal(err)
	}
	r, err := Decode(&b)
	if err != nil {
		t.Fatal(err)
	}
	if len(r.Reason) > maxReason || strings.ContainsAny(r.Reason, "\n\x00") || !strings.HasPrefix(r.Reason, "line one line two ") {
		t.Errorf("reason %q (%d bytes)", r.Reason[:40], len(r.Reason))
	}
}

func TestAnythingMalformedIsRefused(t *testing.T) {
	codeLines := "code " + code[0] + "\ncode " + code[1] + "\n"
	ok := "wagi-fcgi-compile 1\nkey " + key + "\nok\n" + codeLines + "export \"_start\"\nend\n"
	if _, err := Decode(strings.NewReader(ok)); err != nil {
		t.Fatalf("the well-formed result the cases start from: %v", err)
	}
	cases := []struct{ name, in string }{
		{"empty", ""},
		{"no header", strings.TrimPrefix(ok, "wagi-fcgi-compile 1\n")},
		{"another version", strings.Replace(ok, "compile 1", "compile 2", 1)},
		{"a short key", strings.Replace(ok, key, key[:63], 1)},
		{"an upper-case key", strings.Replace(ok, key, strings.ToUpper(key), 1)},
		{"an unknown status", strings.Replace(ok, "\nok\n", "\nfine\n", 1)},
		{"ok with an argument", strings.Replace(ok, "\nok\n", "\nok \"x\"\n", 1)},
		{"an unquoted export", strings.Replace(ok, `"_start"`, `_start`, 1)},
		{"a raw quoted export", strings.Replace(ok, `"_start"`, "`_start`", 1)},
		{"an export with a control character", strings.Replace(ok, `"_start"`, `"_st\nart"`, 1)},
		{"an export that is not UTF-8", strings.Replace(ok, `"_start"`, `"\xff"`, 1)},
		{"an export listed twice", strings.Replace(ok, "end\n", "export \"_start\"\nend\n", 1)},
		{"exports after invalid", "wagi-fcgi-compile 1\nkey " + key + "\ninvalid \"x\"\nexport \"_start\"\nend\n"},
		{"an unquoted reason", "wagi-fcgi-compile 1\nkey " + key + "\ninvalid x\nend\n"},
		{"a reason too long", "wagi-fcgi-compile 1\nkey " + key + "\ninvalid \"" + strings.Repeat("x", maxReason+1) + "\"\nend\n"},
		{"no end", strings.TrimSuffix(ok, "end\n")},
		{"no newline after end", strings.TrimSuffix(ok, "\n")},
		{"data after end", ok + "export \"more\"\n"},
		{"a second end", ok + "end\n"},
		{"ok without code lines", strings.Replace(ok, codeLines, "", 1)},
		{"ok with one code line", strings.Replace(ok, codeLines, "code "+code[0]+"\n", 1)},
		{"ok with three code lines", strings.Replace(ok, codeLines, codeLines+"code "+key+"\n", 1)},
		{"a code line listed twice", strings.Replace(ok, codeLines, "code "+code[0]+"\ncode "+code[0]+"\n", 1)},
		{"a short code line", strings.Replace(ok, code[1], code[1][:63], 1)},
		{"a long code line", strings.Replace(ok, code[1], code[1]+"0", 1)},
		{"an upper-case code line", strings.Replace(ok, code[1], strings.ToUpper(code[1]), 1)},
		{"a code line that is not hex", strings.Replace(ok, code[1], strings.Repeat("g", 64), 1)},
		{"a code line with a space too many", strings.Replace(ok, "code "+code[1], "code  "+code[1], 1)},
		{"a code line after an export", strings.Replace(ok, codeLines+"export \"_start\"\n", "code "+code[0]+"\nexport \"_start\"\ncode "+code[1]+"\n", 1)},
		{"code lines after invalid", "wagi-fcgi-compile 1\nkey " + key + "\ninvalid \"x\"\n" + codeLines + "end\n"},
		{"code lines after error", "wagi-fcgi-compile 1\nkey " + zeroKey + "\nerror \"x\"\n" + codeLines + "end\n"},
		{"an unknown line", strings.Replace(ok, "end\n", "hello\nend\n", 1)},
		{"more than MaxResultBytes", strings.Replace(ok, "end\n", strings.Repeat("export \"x\"\n", MaxResultBytes/10+1)+"end\n", 1)},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r, err := Decode(strings.NewReader(tc.in))
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("got %+v, %v; want ErrMalformed", r, err)
			}
		})
	}
}

func TestALargeValidResultUpToTheBoundIsRead(t *testing.T) {
	r := &Result{Key: key, Status: Valid, Code: code}
	for i := 0; len(r.Exports) < 40_000; i++ {
		r.Exports = append(r.Exports, "export_"+string(rune('a'+i%26))+"_"+strconv.Itoa(i))
	}
	var b bytes.Buffer
	if err := Encode(&b, r); err != nil {
		t.Fatal(err)
	}
	if b.Len() > MaxResultBytes {
		t.Fatalf("test result is %d bytes, over the bound", b.Len())
	}
	got, err := Decode(&b)
	if err != nil || len(got.Exports) != len(r.Exports) {
		t.Fatalf("%v, %d exports", err, len(got.Exports))
	}
}

func TestCodeIDsAreTheModuleIDsWazeroGivesTheBytesCompiled(t *testing.T) {
	bin := []byte("\x00asm\x01\x00\x00\x00")
	ids := CodeIDs(bin)
	for i, want := range []string{sha256hex(append(append([]byte{}, bin...), 0)), sha256hex(append(append([]byte{}, bin...), 1))} {
		if ids[i] != want {
			t.Errorf("id %d = %s, want sha256(bytes ‖ %d) = %s", i, ids[i], i, want)
		}
	}
}

func sha256hex(b []byte) string {
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}
