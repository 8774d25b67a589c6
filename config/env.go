package config

import (
	"bytes"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// Overrides are settings given on the command line (`serve` and `check`);
// they go over the config file's. A reload applies them again, so a
// SIGHUP re-reads every env file, the command line's included.
type Overrides struct {
	// EnvFiles are --env-file paths (relative ones are relative to the
	// working directory), read in order after the config's env_file.
	EnvFiles []string
	// Env are --env K=V assignments, applied last, in order.
	Env []string
}

// LoadWith is Load with the command line's overrides.
func LoadWith(path string, o Overrides) (*Config, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading config: %w", err)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("reading config %s: %w", path, err)
	}
	cfg, err := parse(data, path, filepath.Dir(abs), o)
	if err != nil {
		return nil, err
	}
	cfg.Path = abs
	return cfg, nil
}

// envVar is one assignment of the global environment, with where it came
// from.
type envVar struct{ key, value string }

// globalEnv builds cfg.Env, WAGI's global environment, in WAGI's order
// (later wins): the config's env_file(s), the config's `env` table, then
// the command line's --env-file(s) and --env. Within the config and within
// the command line the file comes first and explicit variables override
// it, as WAGI's --env overrides its --env-file; the command line overrides
// the file, as everywhere. Each module's Environment then gets the global
// environment under its own `environment`; the CGI variables go over both
// when a request runs (internal/wagi.Env).
func (d *decoder) globalEnv(cfg *Config, fileEnv map[string]string, o Overrides) {
	env := map[string]string{}
	for _, f := range cfg.EnvFiles {
		if err := d.readEnvFile(f, f, env); err != nil {
			d.bad(keyPath{"env_file"}, "reading %s: %v", f, err)
		}
	}
	for k, v := range fileEnv {
		env[k] = v
	}
	for _, f := range o.EnvFiles {
		abs, err := filepath.Abs(f)
		if err != nil {
			d.fileErrs = append(d.fileErrs, &Error{Msg: fmt.Sprintf("--env-file %s: %v", f, err)})
			continue
		}
		cfg.EnvFiles = append(cfg.EnvFiles, abs)
		if err := d.readEnvFile(abs, f, env); err != nil {
			d.fileErrs = append(d.fileErrs, &Error{Msg: fmt.Sprintf("--env-file %s: %v", f, err)})
		}
	}
	for _, a := range o.Env {
		k, v, err := ParseEnvAssignment(a)
		if err != nil {
			d.fileErrs = append(d.fileErrs, &Error{Msg: fmt.Sprintf("--env %q: %v", a, err)})
			continue
		}
		env[k] = v
	}
	if len(env) == 0 {
		return
	}
	cfg.Env = env
	for i := range cfg.Modules {
		m := &cfg.Modules[i]
		merged := make(map[string]string, len(env)+len(m.Environment))
		for k, v := range env {
			merged[k] = v
		}
		for k, v := range m.Environment {
			merged[k] = v
		}
		m.Environment = merged
	}
}

// readEnvFile reads the env file at the absolute path abs into env. Bad
// lines are reported as name:line; an error reading the file is returned
// for the caller to report where the file was named.
func (d *decoder) readEnvFile(abs, name string, env map[string]string) error {
	data, err := readSmallFile(abs, maxEnvFileBytes)
	if err != nil {
		return errUnwrapPath(err)
	}
	vars, errs := parseEnvFile(data, name)
	d.fileErrs = append(d.fileErrs, errs...)
	for _, v := range vars {
		env[v.key] = v.value
	}
	return nil
}

// maxEnvFileBytes bounds an env file: its variables go into every
// request's environment.
const maxEnvFileBytes = 1 << 20

// readSmallFile reads the regular file at path, at most max bytes. It is
// opened without blocking, so a FIFO is refused rather than waited on (at
// every start and SIGHUP), and so is a device such as /dev/zero, which
// would never end.
func readSmallFile(path string, max int64) ([]byte, error) {
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file (%s)", st.Mode().Type())
	}
	data, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(data)) > max {
		return nil, fmt.Errorf("larger than %d bytes", max)
	}
	return data, nil
}

// errUnwrapPath drops the path from an *os.PathError: the message names
// the file already.
func errUnwrapPath(err error) error {
	if pe, ok := err.(*os.PathError); ok {
		return pe.Err
	}
	return err
}

// parseEnvFile parses an env file: one KEY=VALUE per line, as WAGI's
// --env-file. WAGI read these with env-file-reader 0.2, whose rule was
// `^(export )?KEY="?VALUE"?$` and which skipped every other line without a
// word, so a typo lost a variable silently (even WAGI's own documented
// example, `TEST_NAME = "test value"`, matched nothing). Here:
//
//   - blank lines and lines starting with '#' are skipped;
//   - an optional "export " prefix is allowed;
//   - white space around the key and around the value is trimmed, so
//     "KEY = value" works;
//   - a value wholly inside matching double or single quotes loses them
//     (nothing inside is unescaped); a value that opens a quote and does
//     not close it is an error;
//   - an unquoted value is taken as written, '#' included (no inline
//     comments, as in WAGI);
//   - a key must not be empty nor hold white space, quotes or NUL, and a
//     value must not hold NUL;
//   - a later line for the same key wins.
//
// Every bad line is reported, as name:line.
func parseEnvFile(data []byte, name string) ([]envVar, []*Error) {
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	var vars []envVar
	var errs []*Error
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(strings.TrimSuffix(line, "\r"))
		if line == "" || line[0] == '#' {
			continue
		}
		bad := func(format string, args ...any) {
			errs = append(errs, &Error{File: name, Line: i + 1, Msg: fmt.Sprintf(format, args...)})
		}
		if rest, ok := strings.CutPrefix(line, "export"); ok && rest != "" && (rest[0] == ' ' || rest[0] == '\t') {
			line = strings.TrimSpace(rest)
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			bad("want KEY=VALUE, got %q", line)
			continue
		}
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if err := checkEnvKey(k); err != nil {
			bad("%v", err)
			continue
		}
		v, err := unquoteEnvValue(v)
		if err != nil {
			bad("%s: %v", k, err)
			continue
		}
		vars = append(vars, envVar{k, v})
	}
	return vars, errs
}

// checkEnvKey checks the name of a variable from an env file.
func checkEnvKey(k string) error {
	switch {
	case k == "":
		return fmt.Errorf("an environment variable needs a name")
	case strings.ContainsAny(k, " \t\"'\x00"):
		return fmt.Errorf("invalid variable name %q: white space, quotes and NUL are not allowed", k)
	}
	return nil
}

// unquoteEnvValue strips one pair of matching quotes around a whole value.
func unquoteEnvValue(v string) (string, error) {
	if v != "" && (v[0] == '"' || v[0] == '\'') {
		q := v[0]
		if len(v) < 2 || v[len(v)-1] != q {
			return "", fmt.Errorf("the value opens a %c quote and does not close it at the end of the line", q)
		}
		v = v[1 : len(v)-1]
	}
	if strings.IndexByte(v, 0) >= 0 {
		return "", fmt.Errorf("an environment variable value must not contain NUL")
	}
	return v, nil
}

// ParseEnvAssignment parses one K=V of --env (serve, check, run). As in
// WAGI, a value wholly inside matching double or single quotes loses them
// (`--env 'FOO="my bar"'`); the key must not be empty nor contain NUL, and
// the value must not contain NUL.
func ParseEnvAssignment(s string) (key, value string, err error) {
	k, v, ok := strings.Cut(s, "=")
	if !ok {
		return "", "", fmt.Errorf("want K=V")
	}
	if k == "" {
		return "", "", fmt.Errorf("an environment variable needs a name")
	}
	if strings.IndexByte(k, 0) >= 0 {
		return "", "", fmt.Errorf("an environment variable name must not contain NUL")
	}
	if len(v) >= 2 && (v[0] == '"' || v[0] == '\'') && v[len(v)-1] == v[0] {
		v = v[1 : len(v)-1]
	}
	if strings.IndexByte(v, 0) >= 0 {
		return "", "", fmt.Errorf("an environment variable value must not contain NUL")
	}
	return k, v, nil
}
