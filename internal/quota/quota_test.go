package quota_test

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"os"
	"strings"
	"testing"

	"github.com/tetratelabs/wazero"
	esys "github.com/tetratelabs/wazero/experimental/sys"
	"github.com/tetratelabs/wazero/experimental/sysfs"
	"github.com/tetratelabs/wazero/imports/wasi_snapshot_preview1"
	"github.com/tetratelabs/wazero/sys"

	"github.com/wagi-fcgi/wagi-fcgi/internal/quota"
	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// fullFS is a directory that refuses every creation for its quota, and
// fails every mkdir with a plain EIO (a real I/O error, which must stay
// EIO).
type fullFS struct{ esys.FS }

func (f fullFS) OpenFile(name string, flag esys.Oflag, perm fs.FileMode) (esys.File, esys.Errno) {
	if flag&esys.O_CREAT != 0 {
		return nil, quota.Exceeded()
	}
	return f.FS.OpenFile(name, flag, perm)
}

func (fullFS) Mkdir(string, fs.FileMode) esys.Errno { return esys.EIO }

// run runs quota.wasm with args, fullFS mounted at /data, with or without
// the wrapper, and returns its answer's body.
func run(t *testing.T, wrap bool, args ...string) string {
	t.Helper()
	ctx := context.Background()
	b, err := os.ReadFile(testenv.Module(t, "quota"))
	if err != nil {
		t.Fatal(err)
	}
	r := wazero.NewRuntimeWithConfig(ctx, wazero.NewRuntimeConfigInterpreter())
	defer r.Close(ctx)
	hb := r.NewHostModuleBuilder(wasi_snapshot_preview1.ModuleName)
	wasi_snapshot_preview1.NewFunctionExporter().ExportFunctions(hb)
	if wrap {
		if err := quota.WrapWASI(hb); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := hb.Instantiate(ctx); err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	cfg := wazero.NewModuleConfig().WithArgs(append([]string{"quota"}, args...)...).WithStdout(&out).
		WithFSConfig(wazero.NewFSConfig().(sysfs.FSConfig).WithSysFSMount(fullFS{sysfs.DirFS(t.TempDir())}, "/data"))
	_, err = r.InstantiateWithConfig(ctx, b, cfg)
	var ee *sys.ExitError
	if err != nil && !(errors.As(err, &ee) && ee.ExitCode() == 0) {
		t.Fatal(err)
	}
	_, body, _ := strings.Cut(out.String(), "\n\n")
	return strings.TrimSpace(body)
}

func TestAQuotaRefusalReachesTheGuestAsENOSPC(t *testing.T) {
	if got := run(t, true, "create", "/data", "3"); got != "created 0 ENOSPC" {
		t.Fatalf("with the wrapper: %q, want created 0 ENOSPC", got)
	}
	if got := run(t, true, "mkdir", "/data/d"); got != "mkdir EIO" {
		t.Fatalf("a real EIO with the wrapper: %q, want mkdir EIO", got)
	}
	// Without it, what wazero makes of the refusal: why the wrapper exists.
	if got := run(t, false, "create", "/data", "3"); got != "created 0 EIO" {
		t.Fatalf("without the wrapper: %q, want created 0 EIO", got)
	}
}

type otherBuilder struct{ wazero.HostModuleBuilder }

func TestWrapWASIRefusesABuilderItDoesNotKnow(t *testing.T) {
	if err := quota.WrapWASI(otherBuilder{}); err == nil {
		t.Fatal("no error for a builder of another shape")
	}
	ctx := context.Background()
	r := wazero.NewRuntime(ctx)
	defer r.Close(ctx)
	// A builder without the WASI functions: refused, nothing changed.
	if err := quota.WrapWASI(r.NewHostModuleBuilder("empty")); err == nil {
		t.Fatal("no error for a builder without WASI functions")
	}
}
