package publish

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/manager"
)

// checkSpec is one module to check, and what it is checked under.
type checkSpec struct {
	cfg    *config.Config // [pool] (who compiles and runs), [ipfs] max_module_size
	name   string         // the module as the user named it, for messages
	bin    []byte
	route  string
	entry  string
	limits config.Limits
	// version is the binary's, for the manager's SERVER_SOFTWARE.
	version string
}

// checkModule checks spec.bin the way `serve` checks a module before it
// serves it, with serve's own code: a manager (package manager) configured
// with one route to the module, started in a temporary state directory.
// So the module is bounded (internal/wasmbound) and compiled in a
// sandboxed `wagi-fcgi compile` process under the compile limits, never
// in this process (trust boundary 3 of docs/design.md); its imports are
// checked against the host functions children provide (internal/wasmhost);
// a text module is converted by wat2wasm there; and its _routes, if it
// exports one, are run in a sandboxed child. It returns serve's warnings
// (a missing entrypoint), and serve's error when serve would refuse it.
func checkModule(ctx context.Context, spec checkSpec) (warnings []string, err error) {
	tmp, err := os.MkdirTemp(tempParent(), "wagi-fcgi-publish-*")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	// Compiles and children run as other users when this runs as root:
	// they must reach the state directory inside.
	if err := os.Chmod(tmp, 0o711); err != nil {
		return nil, err
	}
	file := filepath.Join(tmp, "module")
	if err := os.WriteFile(file, spec.bin, 0o644); err != nil {
		return nil, err
	}
	cfg := *spec.cfg
	cfg.Path = ""
	cfg.StateDir = filepath.Join(tmp, "state")
	cfg.Pool.Children = 1 // enough for _routes, as in `check`
	cfg.Pool.MaxRequests = 0
	cfg.IPFS.Gateway = ""
	cfg.Env = nil
	cfg.Modules = []config.Module{{
		Route: spec.route,
		// What messages call it; the manager reads Ref.
		Module:     spec.name,
		Ref:        config.ModuleRef{Kind: config.RefFile, Path: file, Raw: spec.name},
		Entrypoint: spec.entry,
		Limits:     spec.limits,
	}}
	m, err := manager.New(&cfg, manager.Options{
		Logger:  slog.New(slog.NewTextHandler(io.Discard, nil)),
		Version: spec.version,
		// Beside a running server, whose ledger is locked; and nothing
		// here is a request to charge.
		Check: true,
	})
	if err != nil {
		return nil, err
	}
	defer m.Close()
	if err := m.Start(ctx); err != nil {
		return nil, unplaced(err)
	}
	for _, w := range m.Warnings() {
		warnings = append(warnings, strings.TrimPrefix(w, noPlace))
	}
	return warnings, nil
}

// noPlace starts the manager's messages about a module of a config that
// has no file and no line: the one made up above.
const noPlace = ":0: "

// unplaced drops that "file:line: " from each of the manager's errors.
func unplaced(err error) error {
	errs := []error{err}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		errs = j.Unwrap()
	}
	out := make([]error, 0, len(errs))
	for _, e := range errs {
		if u := errors.Unwrap(e); u != nil && strings.HasPrefix(e.Error(), noPlace) {
			e = u
		}
		out = append(out, e)
	}
	if len(out) == 1 {
		return out[0]
	}
	return fmt.Errorf("%w", errors.Join(out...))
}

// tempParent is where the check's state directory goes: the temporary
// directory, unless this runs as root and another user could not reach
// it (a TMPDIR under /root): compiles and children run as other users then,
// and it is /tmp.
func tempParent() string {
	dir := os.TempDir()
	if os.Geteuid() != 0 {
		return dir
	}
	for d := filepath.Clean(dir); ; d = filepath.Dir(d) {
		st, err := os.Stat(d)
		if err != nil || st.Mode().Perm()&0o001 == 0 {
			return "/tmp"
		}
		if d == "/" {
			return dir
		}
	}
}
