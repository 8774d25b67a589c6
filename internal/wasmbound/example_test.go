package wasmbound_test

import (
	"errors"
	"fmt"

	"github.com/wagi-fcgi/wagi-fcgi/internal/wasmbound"
)

func Example() {
	// A module with one funcref table of 2^27 elements (1 GiB of
	// references per instance in wazero), and nothing else.
	bin := []byte("\x00asm\x01\x00\x00\x00" +
		"\x04\x07\x01\x70\x00\x80\x80\x80\x40") // table section: 1 table, funcref, min 2^27
	_, err := wasmbound.Apply(bin, wasmbound.Default)
	fmt.Println(err)
	fmt.Println(errors.Is(err, wasmbound.ErrBound))

	// The same table with a minimum of 8 and no maximum loads, with the
	// bound as its maximum: table.grow past it returns -1.
	bin = []byte("\x00asm\x01\x00\x00\x00" +
		"\x04\x04\x01\x70\x00\x08")
	out, err := wasmbound.Apply(bin, wasmbound.Default)
	fmt.Printf("% x %v\n", out[8:], err)
	// Output:
	// module exceeds a bound: table 0 declares 134217728 elements, over the bound of 1048576
	// true
	// 04 07 01 70 01 08 80 80 40 <nil>
}
