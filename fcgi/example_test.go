package fcgi_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/wagi-fcgi/wagi-fcgi/fcgi"
)

// This example serves one request over an in-memory connection. The client
// half plays the web server and writes the records nginx would send.
func Example() {
	srv := &fcgi.Server{
		Handler: fcgi.HandlerFunc(func(w *fcgi.ResponseWriter, r *fcgi.Request) {
			body, _ := io.ReadAll(r.Body) // to EOF; don't trust CONTENT_LENGTH
			fmt.Fprintf(w, "Status: 200 OK\r\nContent-Type: text/plain\r\n\r\n")
			fmt.Fprintf(w, "%s %s got %q\n", r.Param("REQUEST_METHOD"), r.Param("SCRIPT_NAME"), body)
		}),
	}
	webServer, app := net.Pipe()
	done := make(chan struct{})
	go func() {
		srv.ServeConn(app)
		close(done)
	}()

	// record encodes one FastCGI record with request id 1 (unpadded).
	record := func(typ byte, content []byte) []byte {
		h := []byte{1, typ, 0, 1, 0, 0, 0, 0}
		binary.BigEndian.PutUint16(h[4:], uint16(len(content)))
		return append(h, content...)
	}
	var req []byte
	req = append(req, record(1, []byte{0, 1, 1, 0, 0, 0, 0, 0})...) // BEGIN_REQUEST: RESPONDER, KEEP_CONN
	var params []byte
	for _, kv := range [][2]string{{"REQUEST_METHOD", "POST"}, {"SCRIPT_NAME", "/hello.wasm"}} {
		params = append(params, byte(len(kv[0])), byte(len(kv[1])))
		params = append(params, kv[0]+kv[1]...)
	}
	req = append(req, record(4, params)...)             // PARAMS
	req = append(req, record(4, nil)...)                // end of PARAMS
	req = append(req, record(5, []byte("hi there"))...) // STDIN
	req = append(req, record(5, nil)...)                // end of STDIN
	go webServer.Write(req)

	// Read records up to END_REQUEST, collecting STDOUT.
	var stdout strings.Builder
	for {
		var h [8]byte
		if _, err := io.ReadFull(webServer, h[:]); err != nil {
			log.Fatal(err)
		}
		content := make([]byte, int(binary.BigEndian.Uint16(h[4:]))+int(h[6]))
		if _, err := io.ReadFull(webServer, content); err != nil {
			log.Fatal(err)
		}
		if h[1] == 6 { // STDOUT
			stdout.Write(content[:binary.BigEndian.Uint16(h[4:])])
		}
		if h[1] == 3 { // END_REQUEST
			break
		}
	}
	webServer.Close()
	<-done
	fmt.Print(strings.ReplaceAll(stdout.String(), "\r\n", "\n"))
	// Output:
	// Status: 200 OK
	// Content-Type: text/plain
	//
	// POST /hello.wasm got "hi there"
}

// A typical setup: serve a unix socket that nginx (fastcgi_pass) or Apache
// (SetHandler "proxy:unix:...|fcgi://localhost/") connects to, and shut down
// gracefully on SIGTERM.
func ExampleServer_Serve() {
	l, err := net.Listen("unix", "/run/wagi-fcgi.sock")
	if err != nil {
		log.Fatal(err)
	}
	srv := &fcgi.Server{
		Handler: fcgi.HandlerFunc(func(w *fcgi.ResponseWriter, r *fcgi.Request) {
			select {
			case <-r.Context().Done(): // client gone: nginx closed the connection
				return
			default:
			}
			fmt.Fprintf(w, "Status: 200 OK\r\nContent-Type: text/plain\r\n\r\nhello %s\n", r.Param("REMOTE_ADDR"))
		}),
		MaxConns:    64,
		MaxReqs:     64,
		IdleTimeout: 2 * time.Minute, // longer than nginx's keepalive_timeout
	}
	go func() {
		sig := make(chan os.Signal, 1)
		signal.Notify(sig, syscall.SIGTERM)
		<-sig
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()
	if err := srv.Serve(l); err != fcgi.ErrServerClosed {
		log.Fatal(err)
	}
}
