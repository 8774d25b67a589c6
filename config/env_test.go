package config

import (
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestEnvFilesParseLikeWAGIsButReportBadLines(t *testing.T) {
	tests := []struct {
		name     string
		file     string
		want     []envVar
		wantErrs []string // substrings, one per error, in order
	}{
		{"a KEY=VALUE line sets the variable", "A=1\n", []envVar{{"A", "1"}}, nil},
		{"blank lines and # comments are skipped", "\n# a comment\n  # indented\nA=1\n\n", []envVar{{"A", "1"}}, nil},
		{"export is allowed in front, as WAGI's reader allowed", "export A=1\n", []envVar{{"A", "1"}}, nil},
		{"white space around key and value is trimmed (WAGI's documented example)", "TEST_NAME = \"test value\"\n", []envVar{{"TEST_NAME", "test value"}}, nil},
		{"double quotes around the whole value are removed", `A="x y"` + "\n", []envVar{{"A", "x y"}}, nil},
		{"single quotes around the whole value are removed", "A='x \"y\"'\n", []envVar{{"A", `x "y"`}}, nil},
		{"nothing inside quotes is unescaped", `A="a\nb"` + "\n", []envVar{{"A", `a\nb`}}, nil},
		{"an empty value is a value", "A=\nB=\"\"\n", []envVar{{"A", ""}, {"B", ""}}, nil},
		{"'#' after a value is part of it: no inline comments", "A=x # y\n", []envVar{{"A", "x # y"}}, nil},
		{"only the first '=' separates", "A=b=c\n", []envVar{{"A", "b=c"}}, nil},
		{"CRLF line ends are accepted", "A=1\r\nB=2\r\n", []envVar{{"A", "1"}, {"B", "2"}}, nil},
		{"a UTF-8 byte order mark is skipped", "\xef\xbb\xbfA=1\n", []envVar{{"A", "1"}}, nil},
		{"a later line for the same key is kept too (and wins when applied)", "A=1\nA=2\n", []envVar{{"A", "1"}, {"A", "2"}}, nil},
		{"a line without '=' is an error with its line", "A=1\nNOPE\n", []envVar{{"A", "1"}}, []string{"vars.env:2: want KEY=VALUE, got \"NOPE\""}},
		{"an empty key is an error", "=x\n", nil, []string{"vars.env:1: an environment variable needs a name"}},
		{"a key with white space inside is an error", "MY KEY=x\n", nil, []string{"vars.env:1: invalid variable name \"MY KEY\""}},
		{"a key with a quote is an error", "\"A\"=x\n", nil, []string{"vars.env:1: invalid variable name"}},
		{"a NUL in a key is an error", "A\x00B=x\n", nil, []string{"vars.env:1: invalid variable name"}},
		{"a NUL in a value is an error", "A=x\x00y\n", nil, []string{"vars.env:1: A: an environment variable value must not contain NUL"}},
		{"an unclosed quote is an error", "A=\"x\n", nil, []string{"vars.env:1: A: the value opens a \" quote"}},
		{"every bad line is reported", "A\nB\nC=1\nD\n", []envVar{{"C", "1"}}, []string{"vars.env:1:", "vars.env:2:", "vars.env:4:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, errs := parseEnvFile([]byte(tt.file), "vars.env")
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("vars = %q, want %q", got, tt.want)
			}
			if len(errs) != len(tt.wantErrs) {
				t.Fatalf("errors = %v, want %d matching %q", errs, len(tt.wantErrs), tt.wantErrs)
			}
			for i, e := range errs {
				if !strings.Contains(e.Error(), tt.wantErrs[i]) {
					t.Errorf("error %d = %q, want it to contain %q", i, e.Error(), tt.wantErrs[i])
				}
			}
		})
	}
}

func TestEnvAssignmentsOfTheCommandLine(t *testing.T) {
	tests := []struct {
		in, key, value, err string
	}{
		{"FOO=bar", "FOO", "bar", ""},
		{"FOO=", "FOO", "", ""},
		{`FOO="my bar"`, "FOO", "my bar", ""},
		{"FOO='my bar'", "FOO", "my bar", ""},
		{`FOO="bar`, "FOO", `"bar`, ""},
		{"FOO=a=b", "FOO", "a=b", ""},
		{"FOO", "", "", "want K=V"},
		{"=bar", "", "", "needs a name"},
		{"F\x00O=1", "", "", "NUL"},
		{"FOO=a\x00", "", "", "NUL"},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			k, v, err := ParseEnvAssignment(tt.in)
			if tt.err != "" {
				if err == nil || !strings.Contains(err.Error(), tt.err) {
					t.Fatalf("err = %v, want one containing %q", err, tt.err)
				}
				return
			}
			if err != nil || k != tt.key || v != tt.value {
				t.Fatalf("got %q, %q, %v; want %q, %q", k, v, err, tt.key, tt.value)
			}
		})
	}
}

// writeFiles writes name → content into a new directory and returns it.
func writeFiles(t *testing.T, files map[string]string) string {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func TestGlobalEnvironmentPrecedenceIsWAGIs(t *testing.T) {
	const twoModules = `
[[module]]
route = "/a"
module = "a.wasm"
environment = { LEVEL = "module", ONLY_A = "a" }

[[module]]
route = "/b"
module = "b.wasm"
`
	tests := []struct {
		name   string
		config string
		files  map[string]string
		o      Overrides
		global map[string]string
		a, b   map[string]string // the modules' Environment
	}{
		{
			name:   "without any global environment a module has its own",
			config: twoModules,
			global: nil,
			a:      map[string]string{"LEVEL": "module", "ONLY_A": "a"},
			b:      nil,
		},
		{
			name:   "the env table reaches every module, under the module's own",
			config: `env = { LEVEL = "global", G = "g" }` + twoModules,
			global: map[string]string{"LEVEL": "global", "G": "g"},
			a:      map[string]string{"LEVEL": "module", "ONLY_A": "a", "G": "g"},
			b:      map[string]string{"LEVEL": "global", "G": "g"},
		},
		{
			name:   "env overrides env_file, as WAGI's --env overrides --env-file",
			config: `env_file = "vars.env"` + "\n" + `env = { LEVEL = "env" }` + twoModules,
			files:  map[string]string{"vars.env": "LEVEL=file\nF=f\n"},
			global: map[string]string{"LEVEL": "env", "F": "f"},
			a:      map[string]string{"LEVEL": "module", "ONLY_A": "a", "F": "f"},
			b:      map[string]string{"LEVEL": "env", "F": "f"},
		},
		{
			name:   "several env files are read in order, the later winning",
			config: `env_file = ["one.env", "two.env"]` + twoModules,
			files:  map[string]string{"one.env": "X=1\nY=1\n", "two.env": "Y=2\n"},
			global: map[string]string{"X": "1", "Y": "2"},
			a:      map[string]string{"LEVEL": "module", "ONLY_A": "a", "X": "1", "Y": "2"},
			b:      map[string]string{"X": "1", "Y": "2"},
		},
		{
			name:   "the command line goes over the config: --env-file over env, --env over all",
			config: `env_file = "vars.env"` + "\n" + `env = { E = "config", F = "config", LEVEL = "config" }` + twoModules,
			files:  map[string]string{"vars.env": "E=file\n", "flag.env": "F=flagfile\nLEVEL=flagfile\n"},
			o:      Overrides{EnvFiles: []string{"flag.env"}, Env: []string{"LEVEL=flag", `Q="quoted value"`}},
			global: map[string]string{"E": "config", "F": "flagfile", "LEVEL": "flag", "Q": "quoted value"},
			a:      map[string]string{"E": "config", "F": "flagfile", "LEVEL": "module", "ONLY_A": "a", "Q": "quoted value"},
			b:      map[string]string{"E": "config", "F": "flagfile", "LEVEL": "flag", "Q": "quoted value"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, tt.files)
			cfgPath := filepath.Join(dir, "wagi.toml")
			if err := os.WriteFile(cfgPath, []byte(tt.config), 0o644); err != nil {
				t.Fatal(err)
			}
			// --env-file paths are relative to the working directory.
			for i, f := range tt.o.EnvFiles {
				tt.o.EnvFiles[i] = filepath.Join(dir, f)
			}
			cfg, err := LoadWith(cfgPath, tt.o)
			if err != nil {
				t.Fatal(err)
			}
			if !reflect.DeepEqual(cfg.Env, tt.global) {
				t.Errorf("Env = %v, want %v", cfg.Env, tt.global)
			}
			if got := cfg.Modules[0].Environment; !reflect.DeepEqual(got, tt.a) {
				t.Errorf("module a's Environment = %v, want %v", got, tt.a)
			}
			if got := cfg.Modules[1].Environment; !reflect.DeepEqual(got, tt.b) {
				t.Errorf("module b's Environment = %v, want %v", got, tt.b)
			}
		})
	}
}

func TestEnvFilesAreResolvedAgainstTheConfigDirectory(t *testing.T) {
	dir := writeFiles(t, map[string]string{"vars.env": "A=1\n", "wagi.toml": `env_file = "vars.env"`})
	cfg, err := Load(filepath.Join(dir, "wagi.toml"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{filepath.Join(dir, "vars.env")}; !reflect.DeepEqual(cfg.EnvFiles, want) {
		t.Errorf("EnvFiles = %v, want %v", cfg.EnvFiles, want)
	}
}

func TestGlobalEnvironmentErrorsNameTheirPlace(t *testing.T) {
	tests := []struct {
		name   string
		config string
		files  map[string]string
		o      Overrides
		want   []string // substrings of the joined error, in order
	}{
		{"a bad line of env_file names the env file and its line",
			"# comment\nenv_file = \"vars.env\"\n", map[string]string{"vars.env": "A=1\n\nBROKEN\n"},
			Overrides{}, []string{"vars.env:3: want KEY=VALUE, got \"BROKEN\""}},
		{"a missing env_file names the config line",
			"\nenv_file = \"nope.env\"\n", nil,
			Overrides{}, []string{"wagi.toml:2: env_file: reading ", "nope.env: no such file or directory"}},
		{"an env_file that is not a string or an array of strings is refused",
			"env_file = 3\n", nil, Overrides{}, []string{"wagi.toml:1: env_file: want an array of strings, got an integer"}},
		{"an empty env_file path is refused",
			"env_file = \"\"\n", nil, Overrides{}, []string{"wagi.toml:1: env_file: an env file path must not be empty"}},
		{"a bad env key is refused with its line",
			"x = 1\nenv = { \"A=B\" = \"1\" }\n", nil, Overrides{}, []string{"wagi.toml:1: unknown key \"x\"", "wagi.toml:2: [env] \"A=B\": an environment variable name must not contain '=' or NUL"}},
		{"a NUL in an env value is refused",
			"env = { A = \"a\\u0000\" }\n", nil, Overrides{}, []string{"wagi.toml:1: [env] A: an environment variable value must not contain NUL"}},
		{"env must be a table",
			"env = \"A=1\"\n", nil, Overrides{}, []string{"wagi.toml:1: env: want a table, got a string"}},
		{"a missing --env-file is named as the flag",
			"", nil, Overrides{EnvFiles: []string{"/nonexistent/flag.env"}}, []string{"--env-file /nonexistent/flag.env: no such file or directory"}},
		{"a bad line of an --env-file names that file and line",
			"", map[string]string{"flag.env": "OK=1\nexport\n"}, Overrides{EnvFiles: []string{"flag.env"}}, []string{"flag.env:2: want KEY=VALUE"}},
		{"a bad --env is refused",
			"", nil, Overrides{Env: []string{"NOEQUALS"}}, []string{"--env \"NOEQUALS\": want K=V"}},
		{"config errors come first, then the env files' in the order they are read",
			"env_file = \"vars.env\"\nbogus = 1\n", map[string]string{"vars.env": "BAD\n"},
			Overrides{}, []string{"wagi.toml:2: unknown key \"bogus\"", "vars.env:1: want KEY=VALUE"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := writeFiles(t, tt.files)
			cfgPath := filepath.Join(dir, "wagi.toml")
			if err := os.WriteFile(cfgPath, []byte(tt.config), 0o644); err != nil {
				t.Fatal(err)
			}
			for i, f := range tt.o.EnvFiles {
				if !filepath.IsAbs(f) {
					tt.o.EnvFiles[i] = filepath.Join(dir, f)
				}
			}
			_, err := LoadWith(cfgPath, tt.o)
			if err == nil {
				t.Fatal("loaded, want an error")
			}
			msg := err.Error()
			at := 0
			for _, w := range tt.want {
				i := strings.Index(msg[at:], w)
				if i < 0 {
					t.Fatalf("error %q does not contain %q (in order)", msg, w)
				}
				at += i + len(w)
			}
		})
	}
}

// An env file is read by the manager at every start and SIGHUP: one that
// is a FIFO (or a device) must be an error, not a read that never ends,
// and one that is huge must not be taken into every request's environment.
func TestEnvFilesThatAreNotSmallRegularFilesAreRefused(t *testing.T) {
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo.env")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	huge := filepath.Join(dir, "huge.env")
	if err := os.WriteFile(huge, []byte("A="+strings.Repeat("x", 2<<20)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	cfgPath := filepath.Join(dir, "wagi.toml")
	if err := os.WriteFile(cfgPath, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct{ name, file, want string }{
		{"a FIFO", fifo, "not a regular file"},
		{"a device", "/dev/zero", "not a regular file"},
		{"a file over 1 MiB", huge, "larger than 1048576 bytes"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := LoadWith(cfgPath, Overrides{EnvFiles: []string{tt.file}})
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), tt.want) {
					t.Fatalf("LoadWith = %v, want an error saying %q", err, tt.want)
				}
			case <-time.After(20 * time.Second):
				t.Fatal("LoadWith still reading the env file after 20s")
			}
		})
	}
}
