// Command gohello is a Go (GOOS=wasip1) CGI module: a greeting plus REQUEST_METHOD and PATH_INFO.
package main

import (
	"fmt"
	"os"
)

func main() {
	fmt.Printf("Content-Type: text/plain\n\nHello from Go\nmethod=%s\npath_info=%s\n",
		os.Getenv("REQUEST_METHOD"), os.Getenv("PATH_INFO"))
}
