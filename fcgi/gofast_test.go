package fcgi

import (
	"bytes"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"testing"

	"github.com/yookoala/gofast"
)

// paramsHandler answers with the sorted params and the body length.
var paramsHandler = HandlerFunc(func(w *ResponseWriter, r *Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		io.WriteString(w, "Status: 500 Internal Server Error\r\n\r\n")
		return
	}
	keys := make([]string, 0, len(r.Params))
	for k := range r.Params {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	io.WriteString(w, "Status: 201 Created\r\nContent-Type: text/plain\r\nX-Test: yes\r\n\r\n")
	for _, k := range keys {
		fmt.Fprintf(w, "%s=%s\n", k, r.Params[k])
	}
	fmt.Fprintf(w, "body=%s\n", body)
	if r.Param("STDERR") != "" {
		w.Stderr().Write([]byte("a stderr line"))
	}
})

func TestServerWorksWithTheGofastClient(t *testing.T) {
	env := startServer(t, paramsHandler)
	cf := gofast.SimpleClientFactory(gofast.SimpleConnFactory("unix", env.addr))
	h := gofast.NewHandler(gofast.NewFileEndpoint("/app/index")(gofast.BasicSession), cf)

	tests := []struct {
		name   string
		req    *http.Request
		wanted []string
	}{
		{"for a GET with a query", httptest.NewRequest("GET", "/x?y=1", nil),
			[]string{"REQUEST_METHOD=GET\n", "QUERY_STRING=y=1\n", "SCRIPT_FILENAME=/app/index\n", "REQUEST_URI=/x?y=1\n", "body=\n"}},
		{"for a POST with a body", httptest.NewRequest("POST", "/upload", strings.NewReader(strings.Repeat("b", 5000))),
			[]string{"REQUEST_METHOD=POST\n", "CONTENT_LENGTH=5000\n", "body=" + strings.Repeat("b", 5000) + "\n"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, tt.req)
			if rec.Code != http.StatusCreated || rec.Header().Get("X-Test") != "yes" {
				t.Errorf("status %d, headers %v", rec.Code, rec.Header())
			}
			for _, w := range tt.wanted {
				if !strings.Contains(rec.Body.String(), w) {
					t.Errorf("body lacks %q:\n%s", w, rec.Body)
				}
			}
		})
	}
}

func TestServerServesSequentialGofastRequestsOnOneConnection(t *testing.T) {
	env := startServer(t, paramsHandler)
	client, err := gofast.SimpleClientFactory(gofast.SimpleConnFactory("unix", env.addr))()
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	for i := range 5 {
		req := gofast.NewRequest(nil)
		req.Params["REQUEST_URI"] = fmt.Sprint("/n", i)
		req.Params["STDERR"] = "1"
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		rec := httptest.NewRecorder()
		var stderr bytes.Buffer
		if err := resp.WriteTo(rec, &stderr); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(rec.Body.String(), fmt.Sprintf("REQUEST_URI=/n%d\n", i)) {
			t.Errorf("request %d: body %q", i, rec.Body)
		}
		if stderr.String() != "a stderr line" {
			t.Errorf("request %d: stderr %q", i, stderr.String())
		}
	}
}
