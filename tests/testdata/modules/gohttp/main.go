// gohttp: WAGI's outbound HTTP (wasi_experimental_http) from Go, with the
// imports declared by go:wasmimport. argv[1] is a URL: it answers
// "status S", then "body:" and the body read with body_read; a refused
// call answers "error CODE".
package main

import (
	"fmt"
	"os"
	"unsafe"
)

//go:wasmimport wasi_experimental_http req
func req(url unsafe.Pointer, urlLen uint32, method unsafe.Pointer, methodLen uint32, headers unsafe.Pointer, headersLen uint32,
	body unsafe.Pointer, bodyLen uint32, status unsafe.Pointer, handle unsafe.Pointer) uint32

//go:wasmimport wasi_experimental_http body_read
func bodyRead(handle uint32, buf unsafe.Pointer, bufLen uint32, read unsafe.Pointer) uint32

//go:wasmimport wasi_experimental_http close
func closeHandle(handle uint32) uint32

func ptr(b []byte) unsafe.Pointer {
	if len(b) == 0 {
		return nil
	}
	return unsafe.Pointer(&b[0])
}

func main() {
	fmt.Print("Content-Type: text/plain\n\n")
	if len(os.Args) < 2 {
		fmt.Println("usage: ?URL")
		return
	}
	url, method, headers := []byte(os.Args[1]), []byte("GET"), []byte("x-from-guest:gohttp\n")
	var status uint16
	var h uint32
	if code := req(ptr(url), uint32(len(url)), ptr(method), uint32(len(method)), ptr(headers), uint32(len(headers)),
		nil, 0, unsafe.Pointer(&status), unsafe.Pointer(&h)); code != 0 {
		fmt.Printf("error %d\n", code)
		return
	}
	fmt.Printf("status %d\nbody:", status)
	buf := make([]byte, 64)
	for {
		var n uint32
		if code := bodyRead(h, ptr(buf), uint32(len(buf)), unsafe.Pointer(&n)); code != 0 {
			fmt.Printf("\nbody_read error %d\n", code)
			break
		}
		if n == 0 {
			break
		}
		os.Stdout.Write(buf[:n])
	}
	closeHandle(h)
}
