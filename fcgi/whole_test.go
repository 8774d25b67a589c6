package fcgi

import (
	"bytes"
	"testing"
)

func wholeRequest(id uint16, keep bool, params []byte, body []byte) []byte {
	flags := byte(0)
	if keep {
		flags = flagKeepConn
	}
	b := appendRecord(nil, typeBeginRequest, id, []byte{0, 1, flags, 0, 0, 0, 0, 0})
	if len(params) > 0 {
		b = appendRecord(b, typeParams, id, params)
	}
	b = appendRecord(b, typeParams, id, nil)
	if len(body) > 0 {
		b = appendRecord(b, typeStdin, id, body)
	}
	return appendRecord(b, typeStdin, id, nil)
}

func TestParseWholeTakesOnlyOneWholeSimpleRequest(t *testing.T) {
	params := appendPair(appendPair(nil, "REQUEST_METHOD", "POST"), "REQUEST_URI", "/x")
	good := wholeRequest(1, true, params, []byte("body"))
	tests := []struct {
		name string
		in   []byte
		ok   bool
	}{
		{"a whole request is taken", good, true},
		{"a request without params or body is taken", wholeRequest(1, false, nil, nil), true},
		{"an incomplete request is not", good[:len(good)-1], false},
		{"a request cut before its body's end is not", good[:len(good)-8], false},
		{"bytes past the request are not", append(append([]byte(nil), good...), 1, 2), false},
		{"a management record is not", append(appendRecord(nil, typeGetValues, 0, nil), good...), false},
		{"another role is not", func() []byte {
			b := append([]byte(nil), good...)
			b[9] = 2
			return b
		}(), false},
		{"request id 0 is not", wholeRequest(0, true, params, nil), false},
		{"params over the bound are not", wholeRequest(1, true, bytes.Repeat([]byte{1, 1, 'a', 'b'}, 300), nil), false},
		{"a body over the bound is not", wholeRequest(1, true, params, make([]byte, 2000)), false},
		{"malformed params are not", wholeRequest(1, true, []byte{0x80, 0, 0}, nil), false},
		{"a bad version is not", func() []byte {
			b := append([]byte(nil), good...)
			b[0] = 2
			return b
		}(), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, ok := ParseWhole(tt.in, 1024, 1024)
			if ok != tt.ok {
				t.Fatalf("ok %v, want %v", ok, tt.ok)
			}
			if ok && tt.name == "a whole request is taken" {
				if w.ID != 1 || !w.KeepConn || w.Params["REQUEST_URI"] != "/x" || string(w.Body) != "body" {
					t.Fatalf("got %+v", w)
				}
			}
		})
	}
}

func TestAppendResponseEndsTheRequest(t *testing.T) {
	out := AppendResponse(nil, 3, bytes.Repeat([]byte("x"), maxChunk+10))
	var types []uint8
	for b := out; len(b) >= headerLen; {
		h, err := parseHeader(b)
		if err != nil || h.id != 3 {
			t.Fatalf("record %+v, %v", h, err)
		}
		types = append(types, h.typ)
		b = b[headerLen+int(h.contentLength)+int(h.paddingLength):]
	}
	want := []uint8{typeStdout, typeStdout, typeStdout, typeEndRequest}
	if !bytes.Equal(types, want) {
		t.Fatalf("record types %v, want %v", types, want)
	}
}

func FuzzParseWhole(f *testing.F) {
	f.Add(wholeRequest(1, true, appendPair(nil, "A", "b"), []byte("x")))
	f.Fuzz(func(t *testing.T, b []byte) {
		w, ok := ParseWhole(b, 4096, 4096)
		if ok && (len(w.Body) > 4096 || w.ID == 0) {
			t.Fatalf("out of bounds: %+v", w)
		}
	})
}
