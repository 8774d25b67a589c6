package tests

import (
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// globalEnvConfig sets every level of the environment at once: the config's
// env_file and env, each module's environment, and clashes with CGI
// variables at each level. The command line adds --env-file and --env.
const globalEnvConfig = `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
env_file = "config.env"
env = { FROM_ENV = "env", FILE_VS_ENV = "env", LEVEL = "env", SCRIPT_NAME = "/global-loses" }

[pool]
children = 1

[[module]]
route = "/own"
module = "{{mods}}/env.wasm"
environment = { LEVEL = "module", FLAG_VS_MODULE = "module", REQUEST_METHOD = "module-loses" }

[[module]]
route = "/plain"
module = "{{mods}}/env.wasm"
`

func TestGlobalEnvironmentReachesEveryModuleWithWAGIsPrecedence(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("config.env", "# the config's env file\nFROM_FILE = \"config file\"\nFILE_VS_ENV=file\nLEVEL=file\n")
	write("flag.env", "export FROM_FLAG_FILE='flag file'\nFLAG_FILE_VS_ENV=flag-file\n")
	bin := buildBinary(t, dir)
	w := startWagi(t, bin, dir, globalEnvConfig,
		"--env-file", filepath.Join(dir, "flag.env"),
		"--env", "FLAG_FILE_VS_ENV=flag", "--env", `FROM_FLAG="quoted flag"`, "--env", "FLAG_VS_MODULE=flag")
	n := startNginx(t, dir, w.sock)
	c := newClient(t, n.base)

	get := func(path string) map[string]string {
		t.Helper()
		r := c.get(path)
		if r.status != 200 {
			t.Fatalf("GET %s: %d %s\n%s", path, r.status, r.body, w.log)
		}
		_, env := parseEnvOutput(t, r.body)
		return env
	}
	tests := []struct {
		path, key, want string
		why             string
	}{
		{"/plain", "FROM_FILE", "config file", "the config's env_file reaches a module without its own environment"},
		{"/plain", "FROM_ENV", "env", "the config's env table reaches it"},
		{"/plain", "FILE_VS_ENV", "env", "env overrides env_file, as WAGI's --env overrides --env-file"},
		{"/plain", "FROM_FLAG_FILE", "flag file", "--env-file reaches it"},
		{"/plain", "FLAG_FILE_VS_ENV", "flag", "--env overrides --env-file"},
		{"/plain", "FROM_FLAG", "quoted flag", "--env's quotes are removed, as WAGI did"},
		{"/plain", "LEVEL", "env", "the config's env overrides its env_file"},
		{"/own", "LEVEL", "module", "a module's own environment overrides the global one"},
		{"/own", "FLAG_VS_MODULE", "module", "even the command line's"},
		{"/own", "FROM_FILE", "config file", "and the rest of the global environment still reaches it"},
		{"/own", "REQUEST_METHOD", "GET", "a CGI variable overrides the module's environment"},
		{"/own", "SCRIPT_NAME", "/own", "and the global one"},
		{"/plain", "SCRIPT_NAME", "/plain", "in every module"},
	}
	envs := map[string]map[string]string{"/own": get("/own"), "/plain": get("/plain")}
	for _, tt := range tests {
		t.Run(tt.why, func(t *testing.T) {
			if got, ok := envs[tt.path][tt.key]; !ok || got != tt.want {
				t.Errorf("%s sees %s=%q (set: %v), want %q", tt.path, tt.key, got, ok, tt.want)
			}
		})
	}
	t.Run("nothing of the server's own environment reaches a module", func(t *testing.T) {
		for path, env := range envs {
			for _, k := range []string{"WAGI_TEST_CANARY", "PATH", "HOME"} {
				if v, ok := env[k]; ok {
					t.Errorf("%s sees the server's %s=%q", path, k, v)
				}
			}
		}
	})

	reloads := 0
	hup := func(want string) {
		t.Helper()
		reloads++
		if err := w.cmd.Process.Signal(syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(30 * time.Second)
		for strings.Count(w.log.String(), want) < 1 || strings.Count(w.log.String(), "reloading") < reloads {
			if time.Now().After(deadline) {
				t.Fatalf("no %q after SIGHUP:\n%s", want, w.log)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	t.Run("SIGHUP re-reads the env files", func(t *testing.T) {
		write("config.env", "FROM_FILE=changed\n")
		write("flag.env", "FROM_FLAG_FILE=changed too\n")
		hup("reloaded")
		// The old generation may finish a request; ask until the new one
		// answers.
		deadline := time.Now().Add(20 * time.Second)
		for {
			env := get("/plain")
			if env["FROM_FILE"] == "changed" && env["FROM_FLAG_FILE"] == "changed too" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("after reload /plain sees FROM_FILE=%q FROM_FLAG_FILE=%q", env["FROM_FILE"], env["FROM_FLAG_FILE"])
			}
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Run("a reload with a bad env file is refused, naming its line, and the running environment stays", func(t *testing.T) {
		write("config.env", "FROM_FILE=broken\nTHIS LINE IS NOT AN ASSIGNMENT\n")
		hup("reload refused")
		if !strings.Contains(w.log.String(), "config.env:2: want KEY=VALUE") {
			t.Fatalf("the refusal does not name config.env:2:\n%s", w.log)
		}
		if got := get("/plain")["FROM_FILE"]; got != "changed" {
			t.Fatalf("after the refused reload FROM_FILE=%q, want the running %q", got, "changed")
		}
	})
	t.Run("check reports the bad env file line too", func(t *testing.T) {
		stdout, stderr, code := runBin(t, bin, nil, "check", "-c", filepath.Join(dir, "wagi.toml"))
		if code == 0 || !strings.Contains(stderr, "config.env:2: want KEY=VALUE") {
			t.Fatalf("check: exit %d, stdout %q, stderr %q", code, stdout, stderr)
		}
		write("config.env", "FROM_FILE=ok\n")
		_, stderr, code = runBin(t, bin, nil, "check", "-c", filepath.Join(dir, "wagi.toml"), "--env-file", filepath.Join(dir, "missing.env"))
		if code == 0 || !strings.Contains(stderr, "--env-file "+filepath.Join(dir, "missing.env")+": no such file or directory") {
			t.Fatalf("check with a missing --env-file: exit %d, stderr %q", code, stderr)
		}
		_, stderr, code = runBin(t, bin, nil, "check", "-c", filepath.Join(dir, "wagi.toml"), "--env", "NOEQUALS")
		if code != 2 || !strings.Contains(stderr, `--env "NOEQUALS": want K=V`) {
			t.Fatalf("check with a bad --env: exit %d, stderr %q", code, stderr)
		}
	})
}
