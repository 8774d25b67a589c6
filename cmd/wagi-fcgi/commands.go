package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/yookoala/gofast"

	"github.com/wagi-fcgi/wagi-fcgi/child"
	"github.com/wagi-fcgi/wagi-fcgi/config"
	"github.com/wagi-fcgi/wagi-fcgi/cpuacct"
	"github.com/wagi-fcgi/wagi-fcgi/fcgi"
	"github.com/wagi-fcgi/wagi-fcgi/internal/compiler"
	"github.com/wagi-fcgi/wagi-fcgi/internal/listen"
	"github.com/wagi-fcgi/wagi-fcgi/internal/logfile"
	"github.com/wagi-fcgi/wagi-fcgi/internal/spinimport"
	"github.com/wagi-fcgi/wagi-fcgi/manager"
)

// shutdownGrace bounds how long in-flight requests may finish on SIGTERM.
const shutdownGrace = 30 * time.Second

func newLogger(w io.Writer) *slog.Logger {
	return logfile.NewLogger(w, "text")
}

func serveCmd(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", "", "config `file` (TOML)")
	httpAddr := fs.String("http", "", "also serve plain HTTP on `addr` for development, through the same FastCGI path")
	overrides := envFlags(fs)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cfgPath == "" || fs.NArg() != 0 {
		return usageError{errors.New("serve needs -c FILE and no other arguments")}
	}
	if err := overrides.check(); err != nil {
		return err
	}
	cfg, err := config.LoadWith(*cfgPath, overrides.Overrides)
	if err != nil {
		return err
	}
	logOut := stderr
	var logFile *logfile.File
	if cfg.LogFile != "" {
		if logFile, err = logfile.Open(cfg.LogFile); err != nil {
			return err
		}
		defer logFile.Close()
		logOut = logFile
	}
	log := logfile.NewLogger(logOut, cfg.LogFormat)
	// The ledger belongs to the process, not to a config generation: a
	// reload must not hand out a fresh budget day.
	ledger, err := cpuacct.OpenLedger(filepath.Join(cfg.StateDir, "cpu-ledger"), cpuacct.LedgerOptions{Logger: log, Retain: manager.LedgerRetain})
	if err != nil {
		return err
	}
	defer ledger.Close()
	opts := manager.Options{Logger: log, Version: getVersion(), Ledger: ledger}
	if cfg.Pool.FastPath {
		// Like the ledger, the fast path's connections belong to the
		// process: every generation's children join them.
		fast, err := manager.NewFastPath(log, connLimit(cfg, log), cfg.Pool.IdleTimeout)
		if err != nil {
			return err
		}
		defer fast.Close()
		opts.Fast = fast
	}
	m, err := manager.New(cfg, opts)
	if err != nil {
		return err
	}
	if err := m.Start(ctx); err != nil {
		m.Close()
		return err
	}
	sw := manager.NewSwitch(m)
	defer func() { sw.Current().Close() }()

	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP, syscall.SIGUSR1)
	defer signal.Stop(hup)
	go func() {
		for sig := range hup {
			switch sig {
			case syscall.SIGUSR1:
				if logFile != nil {
					if err := logFile.Reopen(); err != nil {
						log.Error("reopening the log file", "err", err)
					} else {
						log.Info("log file reopened", "path", cfg.LogFile)
					}
				}
			case syscall.SIGHUP:
				reload(ctx, sw, *cfgPath, overrides.Overrides, cfg, opts, log)
			}
		}
	}()
	l, err := listen.Systemd()
	if err != nil {
		return err
	}
	if l == nil {
		l, err = listen.Open(listen.Spec{
			Network: cfg.Listen.Network, Address: cfg.Listen.Address,
			Mode: cfg.ListenMode, Owner: cfg.ListenOwner, Group: cfg.ListenGroup,
		})
		if err != nil {
			return err
		}
	}
	if opts.Fast != nil {
		l = opts.Fast.Listener(l)
	}
	capacity := cfg.Pool.Children + cfg.Pool.Queue
	conns := connLimit(cfg, log)
	srv := &fcgi.Server{
		Handler:  sw,
		MaxConns: min(capacity, conns),
		MaxReqs:  min(capacity, conns),
		Logger:   log,
		// What a client can make the manager hold is bounded by config
		// (see manager/RATIONALE.md, "Connections").
		ConnLimit:          conns,
		IdleTimeout:        cfg.Pool.IdleTimeout,
		RequestReadTimeout: cfg.Pool.RequestReadTimeout,
		MaxParamsTotal:     int(cfg.Pool.ParamsMemory),
		// The manager reads a body as fast as it arrives once it wants
		// it; before that (while its module loads) little is buffered.
		MaxBodyBuffer: 64 << 10,
	}
	errc := make(chan error, 2)
	go func() { errc <- srv.Serve(l) }()
	log.Info("listening", "fastcgi", l.Addr().Network()+":"+l.Addr().String())

	var hs *http.Server
	if *httpAddr != "" {
		hl, err := net.Listen("tcp", *httpAddr)
		if err != nil {
			srv.Close()
			return fmt.Errorf("--http %s: %w", *httpAddr, err)
		}
		hs = &http.Server{Handler: devFront(l.Addr()), ReadHeaderTimeout: 10 * time.Second}
		go func() { errc <- hs.Serve(hl) }()
		log.Info("listening", "http", "http://"+hl.Addr().String())
	}

	select {
	case <-ctx.Done():
	case err := <-errc:
		if err != nil && !errors.Is(err, fcgi.ErrServerClosed) && !errors.Is(err, http.ErrServerClosed) {
			srv.Close()
			return err
		}
	}
	log.Info("shutting down", "grace", shutdownGrace)
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if hs != nil {
		_ = hs.Shutdown(sctx)
	}
	// Stop accepting, let in-flight requests finish, then stop the
	// children.
	if err := srv.Shutdown(sctx); err != nil {
		log.Warn("shutdown: requests still running at the deadline were cut", "err", err)
	}
	if err := sw.Shutdown(sctx); err != nil {
		log.Warn("shutdown", "err", err)
	}
	log.Info("stopped")
	return nil
}

// connLimit is [pool] max_connections, lowered if the descriptor limit
// cannot hold that many connections besides everything else: each
// connection may also hold a spooled body's file, each child a socket,
// and the rest (listeners, log, ledger, store, the --http front) gets a
// fixed reserve.
func connLimit(cfg *config.Config, log *slog.Logger) int {
	const reserve = 128
	want := cfg.Pool.MaxConnections
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil || rl.Cur > 1<<30 {
		return want
	}
	fit := (int64(rl.Cur) - reserve - 4*int64(cfg.Pool.Children)) / 2
	if fit < int64(want) {
		fit = max(fit, 16)
		log.Warn("max_connections lowered to fit the descriptor limit (RLIMIT_NOFILE)", "max_connections", want, "lowered_to", fit, "nofile", rl.Cur)
		return int(fit)
	}
	return want
}

// reload loads the config again and swaps in a new manager generation; a
// config that does not load is refused and the running one stays.
func reload(ctx context.Context, sw *manager.Switch, path string, o config.Overrides, running *config.Config, opts manager.Options, log *slog.Logger) {
	log.Info("reloading", "config", path)
	// Env files, the config's and --env-file's, are read again.
	cfg, err := config.LoadWith(path, o)
	if err == nil && (cfg.Listen != running.Listen || cfg.LogFile != running.LogFile || cfg.LogFormat != running.LogFormat) {
		log.Warn("listen and log settings change only on a restart; keeping the running ones")
	}
	if err == nil && cfg.Pool.FastPath != running.Pool.FastPath {
		log.Warn("fast_path changes only on a restart; keeping the running setting")
		cfg.Pool.FastPath = running.Pool.FastPath
	}
	if err == nil && (cfg.Pool.MaxConnections != running.Pool.MaxConnections || cfg.Pool.RequestReadTimeout != running.Pool.RequestReadTimeout ||
		cfg.Pool.IdleTimeout != running.Pool.IdleTimeout || cfg.Pool.ParamsMemory != running.Pool.ParamsMemory) {
		log.Warn("max_connections, request_read_timeout, idle_timeout and params_memory change only on a restart; keeping the running ones")
	}
	if err == nil {
		err = sw.Reload(ctx, cfg, opts, shutdownGrace)
	}
	if err != nil {
		log.Error("reload refused; the running configuration stays", "err", err)
		return
	}
	log.Info("reloaded", "routes", len(sw.Current().Routes()))
}

// devFront is the --http development front end: a FastCGI client (gofast)
// that sends every HTTP request to the manager's own listener, so the dev
// path is the production path.
func devFront(addr net.Addr) http.Handler {
	cf := gofast.SimpleClientFactory(gofast.SimpleConnFactory(addr.Network(), addr.String()))
	session := gofast.Chain(gofast.BasicParamsMap, gofast.MapHeader)(gofast.BasicSession)
	return gofast.NewHandler(session, cf)
}

func checkCmd(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cfgPath := fs.String("c", "", "config `file` (TOML)")
	overrides := envFlags(fs)
	strict := fs.Bool("strict", false, "fail on warnings too (a route whose module lacks its entrypoint)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *cfgPath == "" || fs.NArg() != 0 {
		return usageError{errors.New("check needs -c FILE [--strict] and no other arguments")}
	}
	if err := overrides.check(); err != nil {
		return err
	}
	cfg, err := config.LoadWith(*cfgPath, overrides.Overrides)
	if err != nil {
		return err
	}
	// One child is enough to run the modules' _routes.
	cfg.Pool.Children = 1
	m, err := manager.New(cfg, manager.Options{Logger: slog.New(slog.NewTextHandler(io.Discard, nil)), Version: getVersion(), Check: true})
	if err != nil {
		return err
	}
	defer m.Close()
	if err := m.Start(ctx); err != nil {
		return err
	}
	if err := m.LoadAll(ctx); err != nil {
		return err
	}
	warnings := m.Warnings()
	for _, w := range warnings {
		fmt.Fprintf(stderr, "warning: %s\n", w)
	}
	if *strict && len(warnings) > 0 {
		return fmt.Errorf("%s: %d warnings, and --strict makes them errors", *cfgPath, len(warnings))
	}
	fmt.Fprintf(stdout, "%s: ok, %d modules, routes:\n", *cfgPath, len(cfg.Modules))
	for _, r := range m.Routes() {
		fmt.Fprintf(stdout, "  %s\n", r)
	}
	return nil
}

// envOverrides are the global-environment flags of serve and check
// (WAGI's --env and --env-file).
type envOverrides struct{ config.Overrides }

func envFlags(fs *flag.FlagSet) *envOverrides {
	o := &envOverrides{}
	fs.Var((*multiFlag)(&o.Env), "env", "set `K=V` in every module's environment (repeatable; over the config's env and the env files)")
	fs.Var((*multiFlag)(&o.EnvFiles), "env-file", "read KEY=VALUE lines from `file` into every module's environment (repeatable; re-read on SIGHUP)")
	return o
}

// check refuses a malformed --env before anything starts.
func (o *envOverrides) check() error {
	for _, e := range o.Env {
		if _, _, err := config.ParseEnvAssignment(e); err != nil {
			return usageError{fmt.Errorf("--env %q: %w", e, err)}
		}
	}
	return nil
}

// multiFlag collects a repeatable flag.
type multiFlag []string

func (f *multiFlag) String() string     { return strings.Join(*f, ",") }
func (f *multiFlag) Set(v string) error { *f = append(*f, v); return nil }

func runCmd(ctx context.Context, args []string, stderr io.Writer) (int, error) {
	fs := flag.NewFlagSet("run", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var dirs, envs multiFlag
	fs.Var(&dirs, "dir", "mount `GUEST=SRC` (repeatable; SRC as a volume source in the config, \":ro\" for read-only)")
	fs.Var(&envs, "env", "set `K=V` in the module's environment (repeatable)")
	lim := config.Default().Limits
	fs.DurationVar(&lim.Timeout, "timeout", lim.Timeout, "wall-clock limit")
	fs.DurationVar(&lim.CPU, "cpu", lim.CPU, "CPU time limit")
	memory := fs.String("memory", "", "guest memory limit, e.g. 64MiB (default from [limits])")
	stateDir := fs.String("state-dir", "", "module and compilation cache `dir` (default: the user cache dir)")
	defaults := config.Default()
	ipfsAPI := fs.String("ipfs", defaults.IPFS.API, "kubo RPC API `address` for ipfs://, /ipns/ and mfs: sources")
	digest := fs.String("digest", "", "`sha256:HEX` that an https:// MODULE's bytes must have (required for one)")
	var insecure multiFlag
	fs.Var(&insecure, "insecure-registry", "reach the OCI registry `HOST:PORT` over plain HTTP (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 0, err
	}
	if fs.NArg() < 1 {
		return 0, usageError{errors.New("run needs a MODULE")}
	}
	if *memory != "" {
		n, err := config.ParseSize(*memory)
		if err != nil {
			return 0, usageError{fmt.Errorf("--memory: %w", err)}
		}
		lim.Memory = n
	}
	spec := manager.RunSpec{Module: fs.Arg(0), Args: fs.Args()[1:], Limits: lim, StateDir: *stateDir, IPFS: defaults.IPFS}
	spec.IPFS.API = *ipfsAPI
	spec.Digest = *digest
	spec.OCI.InsecureRegistries = insecure
	for _, e := range envs {
		k, v, err := config.ParseEnvAssignment(e)
		if err != nil {
			return 0, usageError{fmt.Errorf("--env %q: %w", e, err)}
		}
		spec.Env = append(spec.Env, k+"="+v)
	}
	for _, d := range dirs {
		guest, src, ok := strings.Cut(d, "=")
		if !ok {
			return 0, usageError{fmt.Errorf("--dir %q: want GUEST=SRC", d)}
		}
		v, err := config.ParseVolume(guest, src, ".")
		if err != nil {
			return 0, usageError{fmt.Errorf("--dir %q: %w", d, err)}
		}
		spec.Dirs = append(spec.Dirs, v)
	}
	if spec.StateDir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			base = os.TempDir()
		}
		if os.Geteuid() == 0 {
			// The child runs as the wagi-fcgi user, which cannot enter
			// root's home.
			base = "/var/cache"
		}
		spec.StateDir = filepath.Join(base, "wagi-fcgi")
	}
	code, err := manager.RunOnce(ctx, spec, manager.Options{Logger: newLogger(stderr), Version: getVersion()})
	if errors.Is(err, manager.ErrLimit) {
		return 0, limitError{err}
	}
	return code, err
}

// importCmd converts a Spin manifest (internal/spinimport). It fails only
// when nothing at all could be converted; what was left out is on stderr.
func importCmd(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("import", flag.ContinueOnError)
	fs.SetOutput(stderr)
	out := fs.String("o", "", "write the config to `file` (local paths relative to it) instead of stdout (absolute paths)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usageError{errors.New("import needs one spin.toml")}
	}
	opts := spinimport.Options{}
	if *out != "" {
		opts.OutDir = filepath.Dir(*out)
	}
	res, err := spinimport.Convert(fs.Arg(0), opts)
	if err != nil {
		return err
	}
	for _, n := range res.Notes {
		fmt.Fprintf(stderr, "%s: %s\n", fs.Arg(0), n)
	}
	if res.Modules == 0 {
		return fmt.Errorf("%s: nothing to convert: no HTTP trigger uses the WAGI executor in a way wagi-fcgi can run (see above)", fs.Arg(0))
	}
	fmt.Fprintf(stderr, "%s: %d module(s) converted\n", fs.Arg(0), res.Modules)
	if *out == "" {
		_, err := stdout.Write(res.Config)
		return err
	}
	// A fresh temporary file (O_EXCL): a name fixed in advance could be a
	// link planted in a shared directory, and be written through.
	f, err := os.CreateTemp(filepath.Dir(*out), filepath.Base(*out)+".*.tmp")
	if err != nil {
		return err
	}
	_, err = f.Write(res.Config)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(f.Name(), 0o644)
	}
	if err == nil {
		err = os.Rename(f.Name(), *out)
	}
	if err != nil {
		_ = os.Remove(f.Name())
	}
	return err
}

func childCmd(ctx context.Context, args []string) error {
	return child.Main(ctx, args)
}

func compileCmd(ctx context.Context, args []string, stdout io.Writer) error {
	return compiler.Main(ctx, args, stdout)
}
