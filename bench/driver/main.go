// Command driver runs the wagi-fcgi benchmarks. bench/run installs the
// tools, builds every binary and module, and calls it; see bench/README.md.
//
// Warm mode (default) starts one nginx in front of every backend (nginx's
// own answer, php-fpm, fcgiwrap with a native CGI and with `wazero run`,
// an in-process wazero FastCGI server, wagi-fcgi) and runs the same wrk
// command against each. Cold mode (-cold) measures wagi-fcgi's cold paths:
// start with a fresh state_dir, restart with a warm compilation cache,
// first request for a new CID, timeout to 504, and memory with 1, 10 and
// 100 modules.
//
// Every process it starts runs in its own process group and is stopped
// before it exits, also on error and on SIGINT/SIGTERM.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"
)

// bench holds the paths and settings of one run.
type bench struct {
	repo, work, bin, mods string
	wrk, nginx, phpFPM    string
	fcgiwrap, kubo        string
	nproc                 int
	threads, conns        int
	duration, warmup      time.Duration
	reps                  int
	rounds                int
	cold                  bool
	out                   string
	command               string // how the run was started, for the report
	only                  string // comma-separated nginx locations to measure (default all)
	hold                  bool   // start the backends, then wait (for profiling by hand)

	port int // nginx's loopback port
}

func main() {
	b := &bench{nproc: runtime.NumCPU()}
	flag.StringVar(&b.repo, "repo", ".", "repository root")
	flag.StringVar(&b.work, "work", "", "empty temporary directory for configs, sockets, logs and state (required)")
	flag.StringVar(&b.bin, "bin", "build/bench", "directory with wagi-fcgi, inproc, hello-cgi and wazero")
	flag.StringVar(&b.mods, "modules", "build/modules", "directory of the test modules (tests/build-modules.sh)")
	flag.StringVar(&b.wrk, "wrk", "wrk", "wrk binary")
	flag.StringVar(&b.nginx, "nginx", "nginx", "nginx binary")
	flag.StringVar(&b.phpFPM, "php-fpm", "php-fpm8.2", "php-fpm binary")
	flag.StringVar(&b.fcgiwrap, "fcgiwrap", "fcgiwrap", "fcgiwrap binary")
	flag.StringVar(&b.kubo, "kubo", "", "ipfs (kubo) binary, for -cold")
	flag.IntVar(&b.threads, "threads", 2, "wrk threads")
	flag.IntVar(&b.conns, "conns", 16, "wrk connections")
	flag.DurationVar(&b.duration, "duration", 6*time.Second, "measured wrk run per backend and round")
	flag.IntVar(&b.rounds, "rounds", 3, "rounds over all backends (each figure is the median over the rounds)")
	flag.DurationVar(&b.warmup, "warmup", 2*time.Second, "wrk warm-up run per backend and round (not reported)")
	flag.IntVar(&b.reps, "reps", 5, "repetitions of each cold measurement (the median is reported)")
	flag.BoolVar(&b.cold, "cold", false, "measure the cold paths instead of throughput")
	flag.StringVar(&b.out, "out", "", "also write the report (markdown) to this file")
	flag.StringVar(&b.command, "command", "", "the command line to print in the report")
	flag.BoolVar(&b.hold, "hold", false, "start every backend behind nginx, print the port, and wait for SIGINT/SIGTERM instead of measuring (for profiling by hand)")
	flag.StringVar(&b.only, "only", "", "measure only these nginx locations, comma-separated (e.g. /php,/hello); default all")
	flag.Parse()
	if b.work == "" {
		fmt.Fprintln(os.Stderr, "driver: -work is required")
		os.Exit(2)
	}
	if b.rounds < 1 {
		fmt.Fprintln(os.Stderr, "driver: -rounds must be at least 1")
		os.Exit(2)
	}
	for _, p := range []*string{&b.repo, &b.work, &b.bin, &b.mods} {
		abs, err := filepath.Abs(*p)
		if err != nil {
			fmt.Fprintln(os.Stderr, "driver:", err)
			os.Exit(2)
		}
		*p = abs
	}
	pgidDir = filepath.Join(b.work, "pgids")
	for _, d := range []string{pgidDir, filepath.Join(b.work, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			fmt.Fprintln(os.Stderr, "driver:", err)
			os.Exit(1)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	go func() {
		s := <-sig
		fmt.Fprintf(os.Stderr, "driver: %v: stopping everything\n", s)
		cancel()
		stopAll()
		os.Exit(130)
	}()

	var report string
	var err error
	if b.cold {
		report, err = b.runCold(ctx)
	} else {
		report, err = b.runWarm(ctx)
	}
	stopAll()
	if err != nil {
		fmt.Fprintln(os.Stderr, "driver:", err)
		os.Exit(1)
	}
	fmt.Print(report)
	if b.out != "" {
		if err := os.WriteFile(b.out, []byte(report), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, "driver:", err)
			os.Exit(1)
		}
	}
}

// logf prints progress to stderr.
func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "bench: "+format+"\n", args...)
}

// path returns a path inside the work directory.
func (b *bench) path(elem ...string) string {
	return filepath.Join(append([]string{b.work}, elem...)...)
}

func writeFile(path, content string, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), mode)
}

// startNginx writes nginx.conf with the given http-level upstreams and
// server-level locations, starts nginx on a free loopback port and waits
// until it listens.
func (b *bench) startNginx(upstreams, locations string) (*daemon, error) {
	port, err := freePort()
	if err != nil {
		return nil, err
	}
	b.port = port
	dir := b.path("nginx")
	for _, d := range []string{"snippets", "logs", "tmp"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return nil, err
		}
	}
	// The shipped location snippet and params, as the README installs them.
	for from, to := range map[string]string{
		"conf/nginx/wagi_fcgi_params":        "wagi_fcgi_params",
		"conf/nginx/wagi-fcgi-location.conf": "snippets/wagi-fcgi-location.conf",
	} {
		data, err := os.ReadFile(filepath.Join(b.repo, from))
		if err != nil {
			return nil, err
		}
		if err := writeFile(filepath.Join(dir, to), string(data), 0o644); err != nil {
			return nil, err
		}
		if to == "snippets/wagi-fcgi-location.conf" {
			// The same snippet for the fast path's instance: only the
			// upstream differs.
			fast := strings.Replace(string(data), "fastcgi_pass          wagi_fcgi;", "fastcgi_pass          wagi_fast;", 1)
			if err := writeFile(filepath.Join(dir, "snippets/wagi-fcgi-fast-location.conf"), fast, 0o644); err != nil {
				return nil, err
			}
		}
	}
	conf := fmt.Sprintf(`# generated by bench/driver
user root;
worker_processes auto;
error_log %[1]s/logs/error.log warn;
pid %[1]s/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    default_type text/plain;
    client_body_temp_path %[1]s/tmp/body;
    fastcgi_temp_path %[1]s/tmp/fastcgi;
    proxy_temp_path %[1]s/tmp/proxy;
    uwsgi_temp_path %[1]s/tmp/uwsgi;
    scgi_temp_path %[1]s/tmp/scgi;
%[3]s
    server {
        listen 127.0.0.1:%[2]d;
        server_name _;
%[4]s
    }
}
`, dir, port, upstreams, locations)
	confPath := filepath.Join(dir, "nginx.conf")
	if err := writeFile(confPath, conf, 0o644); err != nil {
		return nil, err
	}
	d, err := start("nginx", b.path("logs", "nginx.log"), nil, b.nginx, "-p", dir, "-c", confPath, "-g", "daemon off;")
	if err != nil {
		return nil, err
	}
	if err := waitDial(d, "tcp", fmt.Sprintf("127.0.0.1:%d", port), 10*time.Second); err != nil {
		return nil, fmt.Errorf("%w\nnginx error.log:\n%s", err, tail(filepath.Join(dir, "logs/error.log"), 20))
	}
	return d, nil
}

// url is nginx's URL for path.
func (b *bench) url(path string) string {
	return fmt.Sprintf("http://127.0.0.1:%d%s", b.port, path)
}

// header is the machine description printed above each table.
func (b *bench) header(title string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, "### %s\n\n", title)
	if b.command != "" {
		fmt.Fprintf(&sb, "- command: `%s`\n", b.command)
	}
	fmt.Fprintf(&sb, "- date: %s\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(&sb, "- nproc: %d (%s), kernel %s\n", b.nproc, cpuModel(), firstLine(cmdOut("uname", "-r")))
	if la, err := os.ReadFile("/proc/loadavg"); err == nil {
		f := strings.Fields(string(la))
		if len(f) >= 3 {
			fmt.Fprintf(&sb, "- load average before the run: %s %s %s\n", f[0], f[1], f[2])
		}
	}
	return sb.String()
}

func cpuModel() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

// cmdOut runs a command and returns its combined output (or the error).
func cmdOut(name string, args ...string) string {
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil && len(out) == 0 {
		return err.Error()
	}
	return strings.TrimSpace(string(out))
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// fmtDur formats a latency for the tables.
func fmtDur(d time.Duration) string {
	ms := float64(d) / float64(time.Millisecond)
	switch {
	case d <= 0:
		return "–"
	case ms < 10:
		return fmt.Sprintf("%.2f ms", ms)
	case ms < 1000:
		return fmt.Sprintf("%.1f ms", ms)
	default:
		return fmt.Sprintf("%.2f s", ms/1000)
	}
}

// median of ds (ds is sorted in place).
func median(ds []time.Duration) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	n := len(ds)
	if n%2 == 1 {
		return ds[n/2]
	}
	return (ds[n/2-1] + ds[n/2]) / 2
}
