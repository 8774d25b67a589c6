package manager

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strings"

	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/internal/mfsproxy"
	"github.com/wagi-fcgi/wagi-fcgi/internal/modsource"
	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
)

// RunSpec describes one run of a module from the command line.
type RunSpec struct {
	Module   string          // a module reference, as in the config file
	Digest   string          // "sha256:HEX" that a URL module's bytes must have
	Args     []string        // arguments after argv[0]
	Env      []string        // "K=V"; nothing else is in the guest's environment
	Dirs     []config.Volume // directories to mount
	Limits   config.Limits   // Timeout, CPU, Memory and the Compile* limits apply
	StateDir string          // where modules and the compilation cache live
	IPFS     config.IPFS     // the node for ipfs://, /ipns/ and mfs: sources
	OCI      config.OCI      // how oci: modules are pulled
}

// ErrLimit is returned by RunOnce when the module was killed for a limit.
var ErrLimit = errors.New("limit reached")

// RunOnce runs a module once in a child process with the same sandbox and
// limits as a request, but with this process's stdin, stdout and stderr. It
// returns the guest's exit code.
func RunOnce(ctx context.Context, spec RunSpec, opts Options) (int, error) {
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	if opts.ReadyTimeout <= 0 {
		opts.ReadyTimeout = defaultReadyTimeout
	}
	if opts.ChildCommand == nil {
		exe, err := os.Executable()
		if err != nil {
			return 0, fmt.Errorf("find own executable for the child: %w", err)
		}
		opts.ChildCommand = []string{exe, "child"}
	}
	ref, err := config.ParseModuleRef(spec.Module, "")
	if err != nil {
		return 0, err
	}
	if opts.CompileCommand == nil {
		opts.CompileCommand = []string{opts.ChildCommand[0], "compile"}
	}
	// The module is compiled in a sandboxed compile process under the
	// compile limits of spec.Limits, as the server would.
	st, err := newStore(spec.StateDir, spec.IPFS.MaxModuleSize, opts.CompileCommand, opts.Logger)
	if err != nil {
		return 0, err
	}
	st.stopOn(ctx)
	defer st.close(context.Background())
	// As root, the child runs as config.DefaultUser, with the first uid
	// of the default range, as a server's first child would, and the
	// compile process as the range's last uid.
	pool := config.Pool{Children: 1, UIDRange: config.DefaultUIDRange}
	cred, err := childCredential(pool)
	if err != nil {
		return 0, err
	}
	if cred != nil {
		if err := st.compileAs(int(pool.UIDRange.Last), int(cred.Gid)); err != nil {
			return 0, err
		}
	}
	pages := spec.Limits.MemoryPages()
	var ic *ipfs.Client
	needIPFS := modsource.NeedsIPFS(ref)
	for _, d := range spec.Dirs {
		needIPFS = needIPFS || d.Kind != config.VolumeLocal
	}
	if needIPFS {
		if ic, err = ipfs.New(spec.IPFS.API); err != nil {
			return 0, err
		}
		defer ic.Close()
	}
	var digest string
	if spec.Digest != "" {
		if digest, err = config.ParseSHA256(spec.Digest); err != nil {
			return 0, err
		}
	}
	if ref.Kind == config.RefURL && digest == "" {
		return 0, fmt.Errorf("run %s: a URL module needs --digest sha256:HEX", spec.Module)
	}
	srcEnv, err := modsource.NewEnv(ic, spec.OCI)
	if err != nil {
		return 0, err
	}
	from, err := modsource.New(ref, digest, srcEnv)
	if err != nil {
		return 0, err
	}
	// Fetched afresh every time (no cache index): a run is one-off.
	fctx, cancel := context.WithTimeout(ctx, spec.IPFS.FetchTimeout)
	var bin []byte
	id, err := from.Resolve(fctx)
	if err == nil {
		bin, err = from.Fetch(fctx, id, spec.IPFS.MaxModuleSize)
	}
	cancel()
	if err != nil {
		if from.Remote() {
			return 0, fmt.Errorf("fetch %s: %w", spec.Module, err)
		}
		return 0, fmt.Errorf("load %s: %w", spec.Module, err)
	}
	mod, err := st.add(ctx, spec.Module, bin, pages, spec.Limits, nil)
	if err != nil {
		return 0, err
	}
	if !mod.exports["_start"] {
		return 0, fmt.Errorf("run %s: no _start export (not a WASI command)", spec.Module)
	}
	run := &ipc.Run{
		ID:           "run",
		ModuleKey:    mod.key,
		ModulePath:   mod.binary(),
		MemoryPages:  pages,
		Entrypoint:   "_start",
		Args:         append([]string{spec.Module}, spec.Args...),
		Env:          spec.Env,
		InheritStdio: true,
	}
	var mfs *mfsproxy.Proxy
	for _, d := range spec.Dirs {
		switch d.Kind {
		case config.VolumeLocal:
			run.Mounts = append(run.Mounts, ipc.Mount{Guest: d.Guest, Host: d.Path, ReadOnly: d.ReadOnly})
		case config.VolumeIPFS, config.VolumeIPNS:
			cidPath := d.Path
			if d.Kind == config.VolumeIPNS {
				fctx, cancel := context.WithTimeout(ctx, spec.IPFS.FetchTimeout)
				resolved, err := ic.Resolve(fctx, "/ipns/"+d.Path)
				cancel()
				if err != nil {
					return 0, fmt.Errorf("--dir %s=%s: %w", d.Guest, d.Source, err)
				}
				cidPath = strings.TrimPrefix(resolved, "/ipfs/")
			}
			dir := ipfsDirPath(spec.StateDir, cidPath)
			if checkDir(dir) != nil {
				fctx, cancel := context.WithTimeout(ctx, spec.IPFS.FetchTimeout)
				err := ic.GetDir(fctx, "/ipfs/"+cidPath, dir, ipfs.DirLimits{MaxBytes: spec.IPFS.MaxDirSize, MaxFiles: spec.IPFS.MaxDirFiles})
				cancel()
				if err != nil {
					return 0, fmt.Errorf("--dir %s=%s: %w", d.Guest, d.Source, err)
				}
			}
			run.Mounts = append(run.Mounts, ipc.Mount{Guest: d.Guest, Host: dir, ReadOnly: true})
		case config.VolumeMFS:
			// As in the server: the child reaches MFS only through a
			// proxy, within this run's grant.
			if mfs == nil {
				if mfs, err = mfsproxy.Start(ic.BaseURL(), opts.Logger); err != nil {
					return 0, err
				}
				defer mfs.Close()
			}
			run.Mounts = append(run.Mounts, ipc.Mount{Guest: d.Guest, Kind: ipc.MountMFS, Host: mfs.Addr(), MFSPath: d.Path})
		}
	}

	sp := newSpawner()
	defer sp.close()
	env := opts.ChildEnv
	if env == nil {
		env = []string{}
	}
	p, err := startProc(ctx, sp, &procConfig{
		command:      opts.ChildCommand,
		env:          env,
		cacheDir:     st.cacheDir,
		logger:       opts.Logger,
		ready:        opts.ReadyTimeout,
		inheritStdio: true,
		addressSpace: config.DefaultChildMemory(spec.Limits.Memory),
		cred:         cred,
		uidBase:      pool.UIDRange.First,
	}, 0)
	if err != nil {
		return 0, err
	}
	defer func() {
		p.conn.Close() // the child exits when its socket closes
		<-p.exited
	}()
	if mfs != nil {
		run.MFSGrant = mfs.Grant(run.ID, p.pid, mfsproxy.RootsOf(run.Mounts))
	}
	res := execute(ctx, opts.Logger, p, run, spec.Limits, discardOutput{}, chargeTo{}, nil)
	switch {
	case res.err == nil:
		return 0, nil
	case res.killed.ForLimit():
		return 0, fmt.Errorf("%w: %v", ErrLimit, res.err)
	case res.killed != notKilled:
		return 0, res.err
	case res.exitCode != 0:
		return int(res.exitCode), nil
	default:
		return 0, res.err
	}
}

type discardOutput struct{}

func (discardOutput) write([]byte) error { return nil }
