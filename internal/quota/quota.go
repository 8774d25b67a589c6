// Package quota carries "no space left" from a volume file system to the
// guest.
//
// wazero v1.12.0's experimental sys.Errno has no ENOSPC or EDQUOT, and its
// WASI layer maps every errno it does not know to EIO. A volume that refuses
// a write for its quota therefore returns ErrNoSpace (an Errno wazero turns
// into EIO) and calls Exceeded; the child's wrapper around the WASI
// functions that can grow a volume (WrapWASI) then answers ENOSPC instead of
// that EIO. A child runs one request, and one guest call, at a time, so one
// flag per process is enough.
package quota

import (
	"sync/atomic"

	esys "github.com/tetratelabs/wazero/experimental/sys"
)

// ErrNoSpace is the errno a volume file system returns, after calling
// Exceeded, when a quota refuses an operation. wazero reports it to the
// guest as EIO unless WrapWASI's wrapper turns it into ENOSPC.
const ErrNoSpace esys.Errno = 0x7e00

// exceeded is set by Exceeded and taken by the WASI wrapper.
var exceeded atomic.Bool

// Exceeded records that the current guest call was refused for a quota and
// returns ErrNoSpace.
func Exceeded() esys.Errno {
	exceeded.Store(true)
	return ErrNoSpace
}

// take reports and clears the flag.
func take() bool { return exceeded.Swap(false) }
