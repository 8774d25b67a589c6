package tests

import (
	"bytes"
	"fmt"
	"net"
	"net/http"
	"net/http/fcgi"
	"os"
	"path/filepath"
	"testing"
)

// steerCase is module output that asks the web server to serve something
// the client may not fetch itself.
type steerCase struct {
	name   string
	output string
}

var steerCases = []steerCase{
	{"X-Accel-Redirect to an internal location", "Content-Type: text/plain\r\nX-Accel-Redirect: /protected/secret.txt\r\n\r\nmodule body\n"},
	{"X-Sendfile of a file", "Content-Type: text/plain\r\nX-Sendfile: {{secret}}\r\n\r\nmodule body\n"},
	{"a CGI local redirect (Status 200 with a local Location)", "Status: 200 OK\r\nContent-Type: text/plain\r\nLocation: /protected/secret.txt\r\n\r\nmodule body\n"},
}

const secretText = "the secret only the web server may read\n"

// protectedDir makes a directory with the secret in it.
func protectedDir(t *testing.T, dir string) (string, string) {
	t.Helper()
	p := filepath.Join(dir, "protected")
	if err := os.MkdirAll(p, 0o755); err != nil {
		t.Fatal(err)
	}
	secret := filepath.Join(p, "secret.txt")
	if err := os.WriteFile(secret, []byte(secretText), 0o644); err != nil {
		t.Fatal(err)
	}
	return p, secret
}

// checkNoSteer posts each case's output to /raw (which answers its body
// as its CGI output) and checks that the web server served the module's
// response, not the protected file.
func checkNoSteer(t *testing.T, c *client, secret string) {
	for _, tc := range steerCases {
		t.Run(tc.name, func(t *testing.T) {
			out := bytes.ReplaceAll([]byte(tc.output), []byte("{{secret}}"), []byte(secret))
			r := c.do("POST", "/raw", out)
			if bytes.Contains(r.body, []byte(secretText)) {
				t.Fatalf("the module made the web server serve the protected file: %d %q", r.status, r.body)
			}
			if r.status != 200 || !bytes.Equal(r.body, []byte("module body\n")) {
				t.Fatalf("got %d %q, want the module's own 200 response", r.status, r.body)
			}
			for _, h := range []string{"X-Accel-Redirect", "X-Sendfile", "Location"} {
				if v := r.header.Get(h); v != "" {
					t.Fatalf("%s: %q reached the client", h, v)
				}
			}
		})
	}
}

const steerConfig = `
listen = "unix:{{dir}}/wagi.sock"
state_dir = "{{dir}}/state"
[pool]
children = 2
[[module]]
route = "/raw"
module = "{{mods}}/raw.wasm"
`

// TestModuleOutputCannotSteerNginx: nginx acts on X-Accel-Redirect from
// its upstream by serving the named location, `internal` ones included.
func TestModuleOutputCannotSteerNginx(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	prot, secret := protectedDir(t, dir)
	w := startWagi(t, bin, dir, steerConfig)
	n := startNginxWith(t, dir, w.sock, fmt.Sprintf("location /protected/ { internal; alias %s/; }", prot))
	c := newClient(t, n.base)
	if r := c.get("/protected/secret.txt"); r.status != 404 {
		t.Fatalf("the internal location answered a client: %d", r.status)
	}
	checkNoSteer(t, c, secret)
	w.log.waitFor(t, 5e9, "headers the web server would act on were dropped")
}

// TestModuleOutputCannotSteerApache: mod_proxy_fcgi, like mod_cgi, treats
// a 200 with a local Location as a local redirect and serves that path
// itself, here a directory only internal redirects may read.
func TestModuleOutputCannotSteerApache(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	prot, secret := protectedDir(t, dir)
	// Started as root, Apache's workers are www-data: they must reach the
	// socket (its group) and the protected directory.
	config := steerConfig
	if os.Geteuid() == 0 {
		config = "listen_group = \"www-data\"\n" + config
	}
	for _, d := range []string{dir, filepath.Dir(dir)} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	w := startWagi(t, bin, dir, config)
	a := startApacheWith(t, dir, fmt.Sprintf(`Alias "/protected/" "%s/"
<Location "/protected/">
    ProxyPass "!"
    Require env REDIRECT_STATUS
</Location>
`, prot), w.sock)
	c := newClient(t, a.sites[0].base)
	if r := c.get("/protected/secret.txt"); r.status != 403 {
		t.Fatalf("the protected directory answered a client: %d %q", r.status, r.body)
	}
	checkNoSteer(t, c, secret)
}

// TestTheShippedNginxConfigIgnoresXAccelOnItsOwn puts the shipped nginx
// files in front of a FastCGI server that answers X-Accel-Redirect as
// wagi-fcgi never would: the config's own fastcgi_ignore_headers must keep
// nginx from following it (the second wall).
func TestTheShippedNginxConfigIgnoresXAccelOnItsOwn(t *testing.T) {
	dir := t.TempDir()
	prot, _ := protectedDir(t, dir)
	sock := filepath.Join(dir, "steer.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		_ = fcgi.Serve(l, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("X-Accel-Redirect", "/protected/secret.txt")
			w.Header().Set("X-Sendfile", "/etc/passwd")
			w.Header().Set("Content-Type", "text/plain")
			_, _ = w.Write([]byte("module body\n"))
		}))
	}()
	n := startNginxWith(t, dir, sock, fmt.Sprintf("location /protected/ { internal; alias %s/; }", prot))
	r := newClient(t, n.base).get("/anything")
	if bytes.Contains(r.body, []byte(secretText)) || string(r.body) != "module body\n" {
		t.Fatalf("nginx followed X-Accel-Redirect: %d %q", r.status, r.body)
	}
	if v := r.header.Get("X-Sendfile"); v != "" {
		t.Fatalf("X-Sendfile reached the client: %q", v)
	}
}
