package mfsproxy_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	mime "mime/multipart"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"testing"

	esys "github.com/tetratelabs/wazero/experimental/sys"

	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
	"github.com/wagi-fcgi/wagi-fcgi/internal/mfsproxy"
	"github.com/wagi-fcgi/wagi-fcgi/internal/quota"
	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
	"github.com/wagi-fcgi/wagi-fcgi/tests/testenv"
)

// syncBuffer is a log sink the test reads while the proxy writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// fixture is a kubo node, a proxy in front of it, and one grant for this
// test process on /wagi/app, as the manager registers one for a child.
type fixture struct {
	k     *testenv.Kubo
	p     *mfsproxy.Proxy
	log   *syncBuffer
	token string
	hc    *http.Client
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	k := testenv.StartKubo(t)
	log := &syncBuffer{}
	p, err := mfsproxy.Start(k.URL, slog.New(slog.NewTextHandler(log, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	sock := strings.TrimPrefix(p.Addr(), "unix:")
	tr := &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", sock)
	}}
	t.Cleanup(tr.CloseIdleConnections)
	f := &fixture{k: k, p: p, log: log, hc: &http.Client{Transport: tr}}
	f.token = p.Grant("req-test-1", pid(), []mfsproxy.Root{{Path: "/wagi/app", QuotaBytes: 1000}})
	k.Run(t, "files", "mkdir", "-p", "/wagi/app")
	k.Run(t, "files", "mkdir", "-p", "/outside")
	writeMFS(t, k, "secret", "/outside/secret.txt")
	writeMFS(t, k, "inside", "/wagi/app/f.txt")
	return f
}

// call POSTs one RPC call to the proxy, as a compromised child could.
func (f *fixture) call(t *testing.T, token, method, cmd string, q url.Values, body []byte) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, "http://x/api/v0/"+cmd+"?"+q.Encode(), bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if body == nil {
		req.Body, req.ContentLength = nil, 0
	}
	if token != "" {
		req.Header.Set(ipc.MFSGrantHeader, token)
	}
	resp, err := f.hc.Do(req)
	if err != nil {
		t.Fatalf("%s: %v", cmd, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// writeMFS puts data at p in the node's MFS, directly (not through the
// proxy): another writer, or the test's own setup.
func writeMFS(t *testing.T, k *testenv.Kubo, data, p string) {
	t.Helper()
	k.Run(t, "files", "cp", "/ipfs/"+k.AddBytes(t, []byte(data)), p)
}

// multipart is data as the one-file body of files/write.
func multipart(data string) []byte {
	var b bytes.Buffer
	mw := mime.NewWriter(&b)
	w, _ := mw.CreateFormFile("file", "")
	_, _ = io.WriteString(w, data)
	_ = mw.Close()
	return b.Bytes()
}

func pid() int { return os.Getpid() }

func args(a ...string) url.Values { return url.Values{"arg": a} }

func TestAnMFSVolumeWorksThroughTheProxyIncludingAQuotaUndo(t *testing.T) {
	f := newFixture(t)
	c, err := ipfs.New(f.p.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c, err = c.WithHeader(ipc.MFSGrantHeader, f.token)
	if err != nil {
		t.Fatal(err)
	}
	fsys, err := ipfs.NewMFS(c, "/wagi/app", ipfs.MFSOptions{QuotaBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	write := func(name, data string) esys.Errno {
		fl, errno := fsys.OpenFile(name, esys.O_WRONLY|esys.O_CREAT|esys.O_TRUNC, 0o644)
		if errno != 0 {
			return errno
		}
		if _, errno := fl.Write([]byte(data)); errno != 0 {
			fl.Close()
			return errno
		}
		return fl.Close()
	}
	// Every call an MFS volume makes: stat, ls, read, write, touch, mkdir,
	// chmod, mv, rm.
	if errno := write("a.txt", "0123456789"); errno != 0 {
		t.Fatalf("write: %v", errno)
	}
	if errno := fsys.Mkdir("d", 0o755); errno != 0 {
		t.Fatalf("mkdir: %v", errno)
	}
	if errno := fsys.Chmod("a.txt", 0o600); errno != 0 {
		t.Fatalf("chmod: %v", errno)
	}
	if errno := fsys.Rename("a.txt", "d/b.txt"); errno != 0 {
		t.Fatalf("rename: %v", errno)
	}
	if errno := fsys.Rename("d/b.txt", "a.txt"); errno != 0 {
		t.Fatalf("rename back: %v", errno)
	}
	dir, errno := fsys.OpenFile(".", esys.O_RDONLY|esys.O_DIRECTORY, 0)
	if errno != 0 {
		t.Fatalf("open .: %v", errno)
	}
	ents, errno := dir.Readdir(-1)
	dir.Close()
	if errno != 0 || len(ents) != 3 {
		t.Fatalf("readdir: %v %v", ents, errno)
	}
	if errno := fsys.Rmdir("d"); errno != 0 {
		t.Fatalf("rmdir: %v", errno)
	}
	// A quota undo puts the old version back with files/cp /ipfs/<CID the
	// request stat'ed>: another writer fills the volume meanwhile (60 of
	// 100 bytes), so the write-back of 50 bytes is undone.
	fl, errno := fsys.OpenFile("a.txt", esys.O_WRONLY|esys.O_TRUNC, 0)
	if errno != 0 {
		t.Fatal(errno)
	}
	if _, errno := fl.Write(bytes.Repeat([]byte("x"), 50)); errno != 0 {
		t.Fatal(errno)
	}
	writeMFS(t, f.k, strings.Repeat("y", 60), "/wagi/app/other.txt")
	if errno := fl.Close(); errno != quota.ErrNoSpace {
		t.Fatalf("close over quota: %v, want ENOSPC", errno)
	}
	if got := f.k.Run(t, "files", "read", "/wagi/app/a.txt"); got != "0123456789" {
		t.Fatalf("after the undo a.txt is %q", got)
	}
	if strings.Contains(f.log.String(), "refused") {
		t.Fatalf("a legitimate call was refused:\n%s", f.log)
	}
}

func TestEverythingButTheVolumesCallsUnderItsRootsIsRefused(t *testing.T) {
	f := newFixture(t)
	secretCID := strings.TrimSpace(f.k.Run(t, "files", "stat", "--hash", "/outside/secret.txt"))
	peerID := f.k.Run(t, "config", "Identity.PeerID")
	apiAddr := f.k.Run(t, "config", "Addresses.API")
	other := f.p.Grant("req-other-pid", pid()+1, []mfsproxy.Root{{Path: "/wagi/app"}})
	stale := f.p.Grant("req-stale", pid(), []mfsproxy.Root{{Path: "/wagi/app"}})
	f.p.Revoke(stale)

	type call struct {
		token, method, cmd string
		q                  url.Values
		body               []byte
	}
	tok := f.token
	post := func(cmd string, q url.Values) call { return call{tok, "POST", cmd, q, nil} }
	cases := []struct {
		name string
		call call
		want int
	}{
		{"shutdown", post("shutdown", nil), 403},
		{"config read", post("config", args("Identity.PrivKey")), 403},
		{"config write", post("config", args("Addresses.API", "/ip4/0.0.0.0/tcp/1")), 403},
		{"config replace", call{tok, "POST", "config/replace", nil, []byte("{}")}, 403},
		{"key export", post("key/export", args("self")), 403},
		{"cat of any CID", post("cat", args(secretCID)), 403},
		{"files/write outside the roots", call{tok, "POST", "files/write", url.Values{"arg": {"/outside/x"}, "create": {"true"}}, multipart("pwned")}, 403},
		{"files/write next to the root (same prefix)", call{tok, "POST", "files/write", url.Values{"arg": {"/wagi/appx"}, "create": {"true"}}, multipart("pwned")}, 403},
		{"files/write through ..", call{tok, "POST", "files/write", url.Values{"arg": {"/wagi/app/../../outside/x"}, "create": {"true"}}, multipart("pwned")}, 403},
		{"files/write with a relative path", call{tok, "POST", "files/write", url.Values{"arg": {"wagi/app/x"}, "create": {"true"}}, multipart("pwned")}, 403},
		{"files/mv from inside to outside", post("files/mv", args("/wagi/app/f.txt", "/outside/f.txt")), 403},
		{"files/mv from outside to inside", post("files/mv", args("/outside/secret.txt", "/wagi/app/s.txt")), 403},
		{"files/mv of the root itself", post("files/mv", args("/wagi/app", "/wagi/app2")), 403},
		{"files/cp of a CID the request never saw", post("files/cp", args("/ipfs/"+secretCID, "/wagi/app/s.txt")), 403},
		{"files/cp from outside", post("files/cp", args("/outside/secret.txt", "/wagi/app/s.txt")), 403},
		{"files/read outside", post("files/read", args("/outside/secret.txt")), 403},
		{"files/stat of an /ipfs/ path", post("files/stat", args("/ipfs/"+secretCID)), 403},
		{"files/ls of /", post("files/ls", args("/")), 403},
		{"files/rm of the root", call{tok, "POST", "files/rm", url.Values{"arg": {"/wagi/app"}, "recursive": {"true"}}, nil}, 403},
		{"files/rm with a second path outside", post("files/rm", args("/wagi/app/f.txt", "/outside/secret.txt")), 403},
		{"an option the volume never sets", call{tok, "POST", "files/ls", url.Values{"arg": {"/wagi/app"}, "offline": {"true"}}, nil}, 403},
		{"a repeated option", call{tok, "POST", "files/ls", url.Values{"arg": {"/wagi/app"}, "long": {"true", "false"}}, nil}, 403},
		{"files/stat with a body", call{tok, "POST", "files/stat", args("/wagi/app"), []byte("x")}, 403},
		{"GET", call{tok, "GET", "files/stat", args("/wagi/app"), nil}, 403},
		{"a write larger than the volume's quota", call{tok, "POST", "files/write", url.Values{"arg": {"/wagi/app/big"}, "create": {"true"}}, multipart(strings.Repeat("z", 200<<10))}, 413},
		{"no token", call{"", "POST", "files/stat", args("/wagi/app"), nil}, 403},
		{"a made-up token", call{"00112233445566778899aabbccddeeff", "POST", "files/stat", args("/wagi/app"), nil}, 403},
		{"a revoked token", call{stale, "POST", "files/stat", args("/wagi/app"), nil}, 403},
		{"another process's token", call{other, "POST", "files/stat", args("/wagi/app"), nil}, 403},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			status, body := f.call(t, tc.call.token, tc.call.method, tc.call.cmd, tc.call.q, tc.call.body)
			if status != tc.want {
				t.Fatalf("got %d %q, want %d", status, body, tc.want)
			}
		})
	}
	// A body of unannounced length is cut at the bound too: at most the
	// bound reaches kubo (which may keep what it got, inside the volume).
	var mp bytes.Buffer
	mw := mime.NewWriter(&mp)
	fw, _ := mw.CreateFormFile("file", "")
	_, _ = fw.Write(bytes.Repeat([]byte("z"), 200<<10))
	_ = mw.Close()
	req, _ := http.NewRequest("POST", "http://x/api/v0/files/write?arg=/wagi/app/big2&create=true", io.MultiReader(&mp))
	req.Header.Set(ipc.MFSGrantHeader, tok)
	req.Header.Set("Content-Type", mw.FormDataContentType())
	resp, err := f.hc.Do(req)
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 413 {
			t.Fatalf("a chunked write over the bound: %d %q, want 413", resp.StatusCode, body)
		}
	}
	if out, err := exec.Command(f.k.Bin, "--api", f.k.API, "files", "stat", "--size", "/wagi/app/big2").Output(); err == nil {
		n, _ := strconv.Atoi(strings.TrimSpace(string(out)))
		if n > 1000+64<<10 {
			t.Fatalf("a chunked write over the bound left %d bytes", n)
		}
		f.k.Run(t, "files", "rm", "/wagi/app/big2")
	}

	// The same token still does what the volume needs.
	if status, body := f.call(t, tok, "POST", "files/stat", args("/wagi/app/f.txt"), nil); status != 200 {
		t.Fatalf("a granted stat: %d %q", status, body)
	}
	// The node is up, its config unchanged, nothing written outside.
	if got := f.k.Run(t, "config", "Identity.PeerID"); got != peerID {
		t.Fatalf("peer id changed: %q -> %q", peerID, got)
	}
	if got := f.k.Run(t, "config", "Addresses.API"); got != apiAddr {
		t.Fatalf("API address changed: %q -> %q", apiAddr, got)
	}
	if got := f.k.Run(t, "files", "read", "/outside/secret.txt"); got != "secret" {
		t.Fatalf("secret: %q", got)
	}
	if got := f.k.Run(t, "files", "ls", "/outside"); strings.TrimSpace(got) != "secret.txt" {
		t.Fatalf("/outside holds %q", got)
	}
	if got := f.k.Run(t, "files", "ls", "/wagi/app"); strings.TrimSpace(got) != "f.txt" {
		t.Fatalf("/wagi/app holds %q", got)
	}
	log := f.log.String()
	for _, want := range []string{`id=req-test-1`, `call=/api/v0/shutdown`, `call=/api/v0/key/export`, `outside the request's volumes`, `id=req-other-pid`} {
		if !strings.Contains(log, want) {
			t.Errorf("the log lacks %q:\n%s", want, log)
		}
	}
}

// BenchmarkFilesStat is what the proxy adds to one MFS call: files/stat
// straight to kubo, and through the proxy (checks, CID note, forward).
func BenchmarkFilesStat(b *testing.B) {
	k := testenv.StartKubo(b)
	k.Run(b, "files", "mkdir", "-p", "/wagi/app")
	p, err := mfsproxy.Start(k.URL, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		b.Fatal(err)
	}
	defer p.Close()
	token := p.Grant("bench", pid(), []mfsproxy.Root{{Path: "/wagi/app"}})
	for _, bc := range []struct{ name, addr, token string }{{"direct", k.URL, ""}, {"proxy", p.Addr(), token}} {
		b.Run(bc.name, func(b *testing.B) {
			c, err := ipfs.New(bc.addr)
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			if c, err = c.WithHeader(ipc.MFSGrantHeader, bc.token); err != nil {
				b.Fatal(err)
			}
			ctx := context.Background()
			for b.Loop() {
				resp, err := c.API().Request("files/stat", "/wagi/app").Send(ctx)
				if err != nil {
					b.Fatal(err)
				}
				if resp.Error != nil {
					b.Fatal(resp.Error)
				}
				resp.Close()
			}
		})
	}
}
