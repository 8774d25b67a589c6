// Command goecho is a Go (GOOS=wasip1) CGI module that answers its request body as application/octet-stream.
package main

import (
	"bufio"
	"io"
	"os"
)

func main() {
	w := bufio.NewWriterSize(os.Stdout, 64<<10)
	if _, err := w.WriteString("Content-Type: application/octet-stream\n\n"); err != nil {
		os.Exit(1)
	}
	if _, err := io.Copy(w, os.Stdin); err != nil {
		os.Exit(1)
	}
	if err := w.Flush(); err != nil {
		os.Exit(1)
	}
}
