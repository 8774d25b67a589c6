package child

import (
	"context"
	"errors"
	"strings"
	"unicode/utf8"

	"github.com/tetratelabs/wazero/api"

	"github.com/wagi-fcgi/wagi-fcgi/internal/egress"
)

// maxHTTPBody bounds a response body the child accepts from the proxy;
// the proxy enforces http_max_response, this only guards against a
// broken proxy.
const maxHTTPBody = 1 << 30

type httpKey struct{}

// httpState is one request's outbound HTTP: where the proxy is, the
// request's token, and the responses the guest holds.
type httpState struct {
	proxy, token string
	handles      map[uint32]*httpResponse
	next         uint32
}

type httpResponse struct {
	headers string // WAGI's encoding, names in lower case
	body    []byte
	pos     int
}

// withHTTP gives a run's outbound HTTP calls the proxy and token of run.
func withHTTP(ctx context.Context, proxy, token string) context.Context {
	return context.WithValue(ctx, httpKey{}, &httpState{proxy: proxy, token: token})
}

func httpOf(ctx context.Context) *httpState {
	if s, ok := ctx.Value(httpKey{}).(*httpState); ok {
		return s
	}
	return &httpState{}
}

// guestMemory is the guest's exported "memory", as WAGI looked it up.
func guestMemory(mod api.Module) api.Memory {
	return mod.ExportedMemory("memory")
}

// readBytes reads len bytes at ptr; out of range is BufferTooSmall, as
// in WAGI.
func readBytes(mem api.Memory, ptr, n uint64) ([]byte, uint32) {
	b, ok := mem.Read(uint32(ptr), uint32(n))
	if !ok {
		return nil, egress.CodeBufferTooSmall
	}
	return b, egress.CodeOK
}

func readString(mem api.Memory, ptr, n uint64) (string, uint32) {
	b, code := readBytes(mem, ptr, n)
	if code != egress.CodeOK {
		return "", code
	}
	if !utf8.Valid(b) {
		return "", egress.CodeUTF8Error
	}
	return string(b), egress.CodeOK
}

func httpReq(ctx context.Context, mod api.Module, stack []uint64) {
	stack[0] = uint64(doReq(ctx, mod, stack))
}

func doReq(ctx context.Context, mod api.Module, s []uint64) uint32 {
	st := httpOf(ctx)
	mem := guestMemory(mod)
	if mem == nil {
		return egress.CodeMemoryNotFound
	}
	url, code := readString(mem, s[0], s[1])
	if code != egress.CodeOK {
		return code
	}
	method, code := readString(mem, s[2], s[3])
	if code != egress.CodeOK {
		return code
	}
	headers, code := readString(mem, s[4], s[5])
	if code != egress.CodeOK {
		return code
	}
	body, code := readBytes(mem, s[6], s[7])
	if code != egress.CodeOK {
		return code
	}
	if st.proxy == "" {
		// wagi-fcgi run, or a manager without the proxy: nothing is
		// allowed.
		return egress.CodeDestinationNotAllowed
	}
	// The guest waits here; the manager's wall-clock timer still kills
	// this child on time, and the proxy ends the call by the request's
	// deadline.
	resp, err := egress.Call(st.proxy, &egress.Request{Token: st.token, Method: method, URL: url, Headers: headers,
		Open: uint32(len(st.handles)), Body: body}, maxHTTPBody)
	if err != nil {
		var e *egress.Error
		if errors.As(err, &e) {
			return e.Code
		}
		return egress.CodeRuntimeError
	}
	if st.handles == nil {
		st.handles = map[uint32]*httpResponse{}
	}
	// WAGI's handle numbering: the next free one from where it left off.
	first := st.next
	for st.handles[st.next] != nil {
		st.next++
		if st.next == first {
			return egress.CodeTooManySessions
		}
	}
	h := st.next
	if !mem.WriteUint16Le(uint32(s[8]), resp.Status) || !mem.WriteUint32Le(uint32(s[9]), h) {
		return egress.CodeMemoryAccessError
	}
	st.handles[h] = &httpResponse{headers: resp.Headers, body: resp.Body}
	return egress.CodeOK
}

func httpClose(ctx context.Context, _ api.Module, stack []uint64) {
	delete(httpOf(ctx).handles, uint32(stack[0]))
	stack[0] = uint64(egress.CodeOK)
}

func httpHeaderGet(ctx context.Context, mod api.Module, stack []uint64) {
	stack[0] = uint64(headerGet(ctx, mod, stack))
}

func headerGet(ctx context.Context, mod api.Module, s []uint64) uint32 {
	mem, r, code := openHandle(ctx, mod, s[0])
	if code != egress.CodeOK {
		return code
	}
	name, code := readString(mem, s[1], s[2])
	if code != egress.CodeOK {
		return code
	}
	name = strings.ToLower(name)
	value, found := "", false
	for line := range strings.SplitSeq(r.headers, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && k == name {
			value, found = v, true
			break
		}
	}
	if !found {
		return egress.CodeHeaderNotFound
	}
	return writeWhole(mem, value, s[3], s[4], s[5])
}

func httpHeadersGetAll(ctx context.Context, mod api.Module, stack []uint64) {
	stack[0] = uint64(headersGetAll(ctx, mod, stack))
}

func headersGetAll(ctx context.Context, mod api.Module, s []uint64) uint32 {
	mem, r, code := openHandle(ctx, mod, s[0])
	if code != egress.CodeOK {
		return code
	}
	return writeWhole(mem, r.headers, s[1], s[2], s[3])
}

func httpBodyRead(ctx context.Context, mod api.Module, stack []uint64) {
	stack[0] = uint64(bodyRead(ctx, mod, stack))
}

func bodyRead(ctx context.Context, mod api.Module, s []uint64) uint32 {
	mem, r, code := openHandle(ctx, mod, s[0])
	if code != egress.CodeOK {
		return code
	}
	n := min(uint64(len(r.body)-r.pos), uint64(uint32(s[2])))
	if !mem.Write(uint32(s[1]), r.body[r.pos:r.pos+int(n)]) || !mem.WriteUint32Le(uint32(s[3]), uint32(n)) {
		return egress.CodeMemoryAccessError
	}
	r.pos += int(n)
	return egress.CodeOK
}

// openHandle is the guest's memory and the open response with handle h,
// or the WAGI error code saying which is missing.
func openHandle(ctx context.Context, mod api.Module, h uint64) (api.Memory, *httpResponse, uint32) {
	mem := guestMemory(mod)
	if mem == nil {
		return nil, nil, egress.CodeMemoryNotFound
	}
	r := httpOf(ctx).handles[uint32(h)]
	if r == nil {
		return nil, nil, egress.CodeInvalidHandle
	}
	return mem, r, egress.CodeOK
}

// writeWhole writes all of v into the guest's buffer (buf, bufLen) and its
// length at written, or nothing if it does not fit (BufferTooSmall, as
// WAGI: a header value or the header list is never cut).
func writeWhole(mem api.Memory, v string, buf, bufLen, written uint64) uint32 {
	if uint64(len(v)) > uint64(uint32(bufLen)) {
		return egress.CodeBufferTooSmall
	}
	if !mem.WriteString(uint32(buf), v) || !mem.WriteUint32Le(uint32(written), uint32(len(v))) {
		return egress.CodeMemoryAccessError
	}
	return egress.CodeOK
}
