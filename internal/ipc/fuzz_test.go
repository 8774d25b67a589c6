package ipc_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/wagi-fcgi/wagi-fcgi/internal/ipc"
)

// frame encodes one frame by hand, for the seed corpus.
func frame(t ipc.Type, payload []byte) []byte {
	b := []byte{byte(t), 0, 0, 0, 0}
	binary.BigEndian.PutUint32(b[1:], uint32(len(payload)))
	return append(b, payload...)
}

// FuzzChildFrames is the manager's side of the protocol fed with whatever a
// compromised child might send: frames are read with the child limit and
// their payloads decoded as the manager decodes them. Nothing may panic, no
// payload may pass the limit, and a frame that claims more must fail before
// anything is allocated for it.
func FuzzChildFrames(f *testing.F) {
	f.Add(frame(ipc.TypeReady, nil))
	f.Add(append(frame(ipc.TypeStdout, []byte("Content-Type: text/plain\n\nhi")), frame(ipc.TypeDone, ipc.AppendDone(nil, &ipc.Done{Outcome: ipc.OutcomeOK}))...))
	f.Add(frame(ipc.TypeDone, ipc.AppendDone(nil, &ipc.Done{Outcome: ipc.OutcomeExit, ExitCode: 3, Message: "exit"})))
	f.Add(frame(ipc.TypeDone, []byte{0xff, 0xff}))
	f.Add(frame(ipc.TypePreload, ipc.AppendPreload(nil, []ipc.Module{{Key: "k", Path: "/p", MemoryPages: 2}})))
	f.Add([]byte{byte(ipc.TypeStdout), 0x3f, 0xff, 0xff, 0xff}) // claims 1 GiB
	f.Add([]byte{byte(ipc.TypeStderr), 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := ipc.NewReader(bytes.NewReader(data), 64<<10)
		r.SetMaxPayload(ipc.MaxChildPayload)
		for range 1000 {
			typ, p, err := r.ReadFrame()
			if err != nil {
				if !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, ipc.ErrFrameTooLarge) {
					t.Fatalf("unexpected error %v", err)
				}
				return
			}
			if len(p) > ipc.MaxChildPayload {
				t.Fatalf("a %d-byte payload passed the %d-byte limit", len(p), ipc.MaxChildPayload)
			}
			switch typ {
			case ipc.TypeDone:
				var d ipc.Done
				_ = ipc.DecodeDone(p, &d)
				if len(d.Message) > len(p) {
					t.Fatalf("a %d-byte message from a %d-byte payload", len(d.Message), len(p))
				}
			case ipc.TypePreload:
				_, _ = ipc.DecodePreload(p)
			case ipc.TypeRun:
				var run ipc.Run
				_ = ipc.DecodeRun(p, &run)
			}
		}
	})
}

func TestAFrameOverTheChildLimitFailsBeforeItIsRead(t *testing.T) {
	data := append([]byte{byte(ipc.TypeStdout), 0, 0x10, 0, 0}, make([]byte, 1<<20)...) // 1 MiB
	r := ipc.NewReader(bytes.NewReader(data), 64<<10)
	r.SetMaxPayload(ipc.MaxChildPayload)
	if _, _, err := r.ReadFrame(); !errors.Is(err, ipc.ErrFrameTooLarge) {
		t.Fatalf("got %v, want ErrFrameTooLarge", err)
	}
}
