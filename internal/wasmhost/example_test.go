package wasmhost_test

import (
	"context"
	"fmt"

	"github.com/wagi-fcgi/wagi-fcgi/internal/wasmhost"
)

// The compile process's side: a Runtime as children make it, but with
// stubs (it never runs a guest), and the check of a module that imports
// fd_write with a parameter missing, which a child could not link.
func Example() {
	ctx := context.Background()
	rt, provided, err := wasmhost.NewRuntime(ctx, nil, 16, wasmhost.Unimplemented())
	if err != nil {
		fmt.Println(err)
		return
	}
	defer rt.Close(ctx)
	fmt.Println(wasmhost.ModuleNames)

	bin := []byte("\x00asm\x01\x00\x00\x00" +
		"\x01\x08\x01\x60\x03\x7f\x7f\x7f\x01\x7f" + // type 0: (i32 i32 i32) -> i32
		"\x02\x23\x01\x16wasi_snapshot_preview1\x08fd_write\x00\x00") // import it as fd_write
	cm, err := rt.CompileModule(ctx, bin)
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(provided.Check(cm))
	// Output:
	// [wasi_snapshot_preview1 wasi_unstable wasi_experimental_http]
	// imports wasi_snapshot_preview1.fd_write as (param i32 i32 i32) (result i32), but wagi-fcgi provides it as (param i32 i32 i32 i32) (result i32)
}
