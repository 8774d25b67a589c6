package child

import (
	"context"

	"github.com/tetratelabs/wazero/api"
)

// The request's environment reaches the guest through our own environ_get
// and environ_sizes_get, which read it from the call's context. wazero's
// ModuleConfig.WithEnv copies the whole config (a map included) on every
// call, which for the 25-odd variables of a CGI request cost a third of
// a small request's time in the child. Every other WASI function is
// wazero's own.

// environKey is the context key of a request's environment.
type environKey struct{}

// environ is a request's environment as WASI hands it over: "K=V" strings
// and the size of all of them with their NUL terminators.
type environ struct {
	vars []string
	size uint32
}

func newEnviron(vars []string) *environ {
	e := &environ{vars: vars}
	for _, v := range vars {
		e.size += uint32(len(v)) + 1
	}
	return e
}

func withEnviron(ctx context.Context, vars []string) context.Context {
	return context.WithValue(ctx, environKey{}, newEnviron(vars))
}

func environOf(ctx context.Context) *environ {
	if e, ok := ctx.Value(environKey{}).(*environ); ok {
		return e
	}
	return &environ{}
}

// WASI errno values (preview 1).
const (
	errnoSuccess = 0
	errnoFault   = 21
)

func environSizesGet(ctx context.Context, mod api.Module, stack []uint64) {
	e := environOf(ctx)
	mem := mod.Memory()
	if !mem.WriteUint32Le(uint32(stack[0]), uint32(len(e.vars))) || !mem.WriteUint32Le(uint32(stack[1]), e.size) {
		stack[0] = errnoFault
		return
	}
	stack[0] = errnoSuccess
}

func environGet(ctx context.Context, mod api.Module, stack []uint64) {
	e := environOf(ctx)
	mem := mod.Memory()
	offsets, bytes := uint32(stack[0]), uint32(stack[1])
	offsetsBuf, ok := mem.Read(offsets, uint32(len(e.vars))*4)
	if !ok {
		stack[0] = errnoFault
		return
	}
	bytesBuf, ok := mem.Read(bytes, e.size)
	if !ok {
		stack[0] = errnoFault
		return
	}
	var oi, bi uint32
	for _, v := range e.vars {
		at := bytes + bi
		offsetsBuf[oi], offsetsBuf[oi+1], offsetsBuf[oi+2], offsetsBuf[oi+3] = byte(at), byte(at>>8), byte(at>>16), byte(at>>24)
		oi += 4
		bi += uint32(copy(bytesBuf[bi:], v))
		bytesBuf[bi] = 0
		bi++
	}
	stack[0] = errnoSuccess
}
