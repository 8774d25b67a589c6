// Command hello is the quick-start module: a WAGI page written in Go and
// compiled to WebAssembly (GOOS=wasip1 GOARCH=wasm). It greets the visitor
// and shows what a module sees of the request.
package main

import (
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
)

func main() {
	body, _ := io.ReadAll(os.Stdin)
	fmt.Print("Content-Type: text/plain; charset=utf-8\n\n")
	fmt.Printf("Hello from WebAssembly, served by %s.\n\n", os.Getenv("SERVER_SOFTWARE"))
	fmt.Printf("%s %s\n", os.Getenv("REQUEST_METHOD"), os.Getenv("X_FULL_URL"))
	fmt.Printf("argv: %q\n", os.Args)
	if len(body) > 0 {
		fmt.Printf("body: %d bytes\n", len(body))
	}
	fmt.Println("\nenvironment:")
	env := os.Environ()
	sort.Strings(env)
	for _, kv := range env {
		fmt.Println("  " + strings.Replace(kv, "=", " = ", 1))
	}
}
