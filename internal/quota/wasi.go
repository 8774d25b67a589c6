package quota

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"unsafe"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// WASI preview 1 errno values.
const (
	wasiErrnoIO    = 29
	wasiErrnoNoSpc = 51
)

// growing are the WASI functions through which a guest can make a volume
// use more room (or, for MFS, at whose end buffered data is written back).
var growing = []string{
	"fd_write", "fd_pwrite", "fd_allocate", "fd_filestat_set_size",
	"fd_close", "fd_sync", "fd_datasync", "fd_renumber", "fd_filestat_set_times",
	"path_open", "path_create_directory", "path_link", "path_rename",
}

// WrapWASI makes the functions of wazero's WASI host module that can hit a
// volume quota answer ENOSPC (51) instead of EIO when the volume said so
// (Exceeded). b must be the builder of wasi_snapshot_preview1 after
// wasi_snapshot_preview1.NewFunctionExporter().ExportFunctions(b), before
// Instantiate.
//
// wazero offers no public way to wrap one of its own WASI functions, so
// this reaches into the builder (pinned wazero v1.12.0): its
// nameToHostFunc map, and each function's Code.GoFunc, which wazero calls
// as an api.GoModuleFunction. If that shape is not found (another wazero
// version), it changes nothing and returns an error. Only this builder
// changes: wazero's own function definitions are shared by every runtime
// of the process, so they are copied, not modified.
func WrapWASI(b wazero.HostModuleBuilder) error {
	bv := reflect.ValueOf(b)
	if bv.Kind() != reflect.Pointer || bv.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("quota: unexpected host module builder %T", b)
	}
	funcs := bv.Elem().FieldByName("nameToHostFunc")
	if !funcs.IsValid() || funcs.Kind() != reflect.Map {
		return errors.New("quota: wazero's host module builder has no nameToHostFunc map")
	}
	funcs = reflect.NewAt(funcs.Type(), unsafe.Pointer(funcs.UnsafeAddr())).Elem()
	// The map holds wazero's package-level *HostFunc values, shared by
	// every runtime of the process: each is replaced by a copy with the
	// wrapper, never changed in place.
	type slot struct {
		name reflect.Value
		fn   reflect.Value // the copy
	}
	var slots []slot
	for _, name := range growing {
		key := reflect.ValueOf(name)
		hf := funcs.MapIndex(key)
		if !hf.IsValid() || hf.Kind() != reflect.Pointer || hf.IsNil() || hf.Elem().Kind() != reflect.Struct {
			return fmt.Errorf("quota: no WASI function %s in the builder", name)
		}
		cp := reflect.New(hf.Elem().Type())
		cp.Elem().Set(hf.Elem())
		code := cp.Elem().FieldByName("Code")
		if !code.IsValid() || code.Kind() != reflect.Struct {
			return fmt.Errorf("quota: WASI function %s has no Code", name)
		}
		goFunc := code.FieldByName("GoFunc")
		if !goFunc.IsValid() || goFunc.Kind() != reflect.Interface || !goFunc.CanSet() {
			return fmt.Errorf("quota: WASI function %s has no GoFunc", name)
		}
		orig, ok := goFunc.Interface().(api.GoModuleFunction)
		if !ok {
			return fmt.Errorf("quota: WASI function %s is a %T, not an api.GoModuleFunction", name, goFunc.Interface())
		}
		goFunc.Set(reflect.ValueOf(wrap(orig)))
		slots = append(slots, slot{key, cp})
	}
	// All found: only now change the builder.
	for _, s := range slots {
		funcs.SetMapIndex(s.name, s.fn)
	}
	return nil
}

// wrap is orig answering ENOSPC where a quota made it answer EIO.
func wrap(orig api.GoModuleFunction) api.GoModuleFunction {
	return api.GoModuleFunc(func(ctx context.Context, mod api.Module, stack []uint64) {
		take()
		orig.Call(ctx, mod, stack)
		if take() && stack[0] == wasiErrnoIO {
			stack[0] = wasiErrnoNoSpc
		}
	})
}
