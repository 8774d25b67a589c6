package wasmhost

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"unsafe"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// WASI preview0 (`wasi_unstable`, witx in WebAssembly/WASI
// legacy/preview0) is what the first WASI toolchains emitted, and what
// some WAGI modules still import. Most of it has preview1's ABI exactly:
// the same names, parameters, enums and struct layouts. Those functions
// are wazero's preview1 functions exported again under the module name
// wasi_unstable (as NewFunctionExporter is meant for), with the same
// environment and quota wrapping as preview1.
//
// Where the ABI differs:
//
//   - fd_seek: the whence enum is ordered cur, end, set (preview1: set,
//     cur, end). Adapted: the value is translated and preview1's fd_seek
//     called.
//   - fd_filestat_get, path_filestat_get: filestat has nlink as a u32
//     (preview1: u64), so every later field moves and the struct is 56
//     bytes, not 64. Refused: preview1's function would write 8 bytes past
//     what the guest reserved.
//   - poll_oneoff: subscription_clock starts with an extra userdata
//     "identifier", so a subscription is 56 bytes, not 48, and its fields
//     are read from the wrong offsets. Refused.
//
// A refused function is not exported, and Provided.Check (the compile
// process's check) refuses a module that imports it, naming the import and
// the reason (see ImportRefusal), so it fails at load and never half-runs.

// preview0Same are the preview0 functions whose ABI is preview1's.
var preview0Same = []string{
	"args_get", "args_sizes_get", "environ_get", "environ_sizes_get",
	"clock_res_get", "clock_time_get",
	"fd_advise", "fd_allocate", "fd_close", "fd_datasync",
	"fd_fdstat_get", "fd_fdstat_set_flags", "fd_fdstat_set_rights",
	"fd_filestat_set_size", "fd_filestat_set_times",
	"fd_pread", "fd_prestat_get", "fd_prestat_dir_name", "fd_pwrite",
	"fd_read", "fd_readdir", "fd_renumber", "fd_sync", "fd_tell", "fd_write",
	"path_create_directory", "path_filestat_set_times", "path_link", "path_open",
	"path_readlink", "path_remove_directory", "path_rename", "path_symlink", "path_unlink_file",
	"proc_exit", "proc_raise", "random_get", "sched_yield",
	"sock_recv", "sock_send", "sock_shutdown",
}

// preview0Refused are the preview0 functions whose ABI differs from
// preview1's in a way not worth translating, with the reason.
var preview0Refused = map[string]string{
	"fd_filestat_get":   "its filestat has a 32-bit nlink (56 bytes; preview1's is 64)",
	"path_filestat_get": "its filestat has a 32-bit nlink (56 bytes; preview1's is 64)",
	"poll_oneoff":       "its clock subscription has an extra identifier field (56 bytes; preview1's is 48)",
}

// ImportRefusal says why module.name is refused although a guest may know
// it, or "" when it is not one of those.
func ImportRefusal(module, name string) string {
	if module != Preview0 {
		return ""
	}
	if why, ok := preview0Refused[name]; ok {
		return fmt.Sprintf("%s.%s differs from preview1 and is not provided: %s; rebuild the module for wasi_snapshot_preview1", module, name, why)
	}
	return ""
}

// instantiatePreview0 instantiates wasi_unstable in rt: preview1's
// functions where the ABI is the same, fd_seek adapted, nothing else.
func instantiatePreview0(ctx context.Context, rt wazero.Runtime, environ map[string]api.GoModuleFunction) error {
	b := rt.NewHostModuleBuilder(Preview0)
	if err := exportWASI(b, environ); err != nil {
		return err
	}
	funcs, err := builderFuncs(b)
	if err != nil {
		return fmt.Errorf("wasi_unstable: %w", err)
	}
	keep := map[string]bool{"fd_seek": true}
	for _, n := range preview0Same {
		keep[n] = true
	}
	var missing []string
	for n := range keep {
		if !funcs.MapIndex(reflect.ValueOf(n)).IsValid() {
			missing = append(missing, n)
		}
	}
	if len(missing) > 0 {
		sort.Strings(missing)
		return fmt.Errorf("wasi_unstable: wazero exports no preview1 %v", missing)
	}
	for _, k := range funcs.MapKeys() {
		if !keep[k.String()] {
			funcs.SetMapIndex(k, reflect.Value{})
		}
	}
	if err := keepExportNames(b, keep); err != nil {
		return fmt.Errorf("wasi_unstable: %w", err)
	}
	if err := wrapFunc(funcs, "fd_seek", seekWhence0); err != nil {
		return fmt.Errorf("wasi_unstable: %w", err)
	}
	_, err = b.Instantiate(ctx)
	return err
}

// seekWhence0 is preview1's fd_seek taking preview0's whence.
func seekWhence0(orig api.GoModuleFunction) api.GoModuleFunction {
	return api.GoModuleFunc(func(ctx context.Context, mod api.Module, stack []uint64) {
		// Parameters: fd, offset, whence, result.newoffset.
		switch uint32(stack[2]) {
		case 0: // cur
			stack[2] = 1
		case 1: // end
			stack[2] = 2
		case 2: // set
			stack[2] = 0
		default:
			stack[0] = errnoInval
			return
		}
		orig.Call(ctx, mod, stack)
	})
}

// errnoInval is WASI's EINVAL (the same number in preview0 and preview1).
const errnoInval = 28

// builderFuncs is wazero v1.12.0's HostModuleBuilder name → *HostFunc map
// (as internal/quota reaches it; see quota.WrapWASI for why it is safe to
// change: only this builder's map changes).
func builderFuncs(b wazero.HostModuleBuilder) (reflect.Value, error) {
	bv := reflect.ValueOf(b)
	if bv.Kind() != reflect.Pointer || bv.Elem().Kind() != reflect.Struct {
		return reflect.Value{}, fmt.Errorf("unexpected host module builder %T", b)
	}
	funcs := bv.Elem().FieldByName("nameToHostFunc")
	if !funcs.IsValid() || funcs.Kind() != reflect.Map {
		return reflect.Value{}, errors.New("wazero's host module builder has no nameToHostFunc map")
	}
	return reflect.NewAt(funcs.Type(), unsafe.Pointer(funcs.UnsafeAddr())).Elem(), nil
}

// keepExportNames trims the builder's ordered export name list (which
// wazero walks with the map) to the names in keep.
func keepExportNames(b wazero.HostModuleBuilder, keep map[string]bool) error {
	names := reflect.ValueOf(b).Elem().FieldByName("exportNames")
	if !names.IsValid() || names.Kind() != reflect.Slice || names.Type().Elem().Kind() != reflect.String {
		return errors.New("wazero's host module builder has no exportNames list")
	}
	names = reflect.NewAt(names.Type(), unsafe.Pointer(names.UnsafeAddr())).Elem()
	kept := reflect.MakeSlice(names.Type(), 0, len(keep))
	for i := 0; i < names.Len(); i++ {
		if keep[names.Index(i).String()] {
			kept = reflect.Append(kept, names.Index(i))
		}
	}
	names.Set(kept)
	return nil
}

// wrapFunc replaces name in funcs by a copy whose Go function is
// wrap(the original). wazero's *HostFunc values are shared by every
// runtime of the process, so they are copied, never changed.
func wrapFunc(funcs reflect.Value, name string, wrap func(api.GoModuleFunction) api.GoModuleFunction) error {
	key := reflect.ValueOf(name)
	hf := funcs.MapIndex(key)
	if !hf.IsValid() || hf.Kind() != reflect.Pointer || hf.IsNil() || hf.Elem().Kind() != reflect.Struct {
		return fmt.Errorf("no function %s in the builder", name)
	}
	cp := reflect.New(hf.Elem().Type())
	cp.Elem().Set(hf.Elem())
	code := cp.Elem().FieldByName("Code")
	if !code.IsValid() || code.Kind() != reflect.Struct {
		return fmt.Errorf("function %s has no Code", name)
	}
	goFunc := code.FieldByName("GoFunc")
	if !goFunc.IsValid() || goFunc.Kind() != reflect.Interface || !goFunc.CanSet() {
		return fmt.Errorf("function %s has no GoFunc", name)
	}
	orig, ok := goFunc.Interface().(api.GoModuleFunction)
	if !ok {
		return fmt.Errorf("function %s is a %T, not an api.GoModuleFunction", name, goFunc.Interface())
	}
	goFunc.Set(reflect.ValueOf(wrap(orig)))
	funcs.SetMapIndex(key, cp)
	return nil
}
