package child

import (
	"io"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func socketpair(t *testing.T) (*blockingFD, int) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	b, err := newBlockingFD(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Close(); unix.Close(fds[1]) })
	return b, fds[1]
}

func TestBlockingFDReadsWhatArrivesBeforeAndAfterTheRawWait(t *testing.T) {
	for _, delay := range []time.Duration{0, rawWait / 5, 3 * rawWait} {
		t.Run(delay.String(), func(t *testing.T) {
			b, peer := socketpair(t)
			go func() {
				time.Sleep(delay)
				unix.Write(peer, []byte("run"))
			}()
			buf := make([]byte, 8)
			n, err := b.Read(buf)
			if err != nil || string(buf[:n]) != "run" {
				t.Fatalf("got %q, %v; want \"run\"", buf[:n], err)
			}
			if _, err := b.Write([]byte("done")); err != nil {
				t.Fatal(err)
			}
			n, err = unix.Read(peer, buf)
			if err != nil || string(buf[:n]) != "done" {
				t.Fatalf("peer got %q, %v; want \"done\"", buf[:n], err)
			}
		})
	}
}

func TestBlockingFDWaitsInPollOnceIdleForTheRawWait(t *testing.T) {
	// The test goroutine sits in a raw read, so the runtime pre-empts it
	// with a signal every 10 ms, as it does a child's: the interrupted
	// reads must still add up to rawWait and end in poll(2).
	b, peer := socketpair(t)
	go func() {
		time.Sleep(4 * rawWait)
		unix.Write(peer, []byte("run"))
	}()
	buf := make([]byte, 8)
	if n, err := b.Read(buf); err != nil || string(buf[:n]) != "run" {
		t.Fatalf("got %q, %v", buf[:n], err)
	}
	if b.polls == 0 {
		t.Fatalf("an idle wait of %s never went to poll(2): an idle child would keep a thread busy", 4*rawWait)
	}
}

func TestBlockingFDReportsEOFWhenTheManagerClosesItsEnd(t *testing.T) {
	for _, delay := range []time.Duration{0, 3 * rawWait} {
		t.Run(delay.String(), func(t *testing.T) {
			b, peer := socketpair(t)
			go func() {
				time.Sleep(delay)
				unix.Shutdown(peer, unix.SHUT_WR)
			}()
			if n, err := b.Read(make([]byte, 8)); err != io.EOF {
				t.Fatalf("got %d, %v; want io.EOF", n, err)
			}
		})
	}
}
