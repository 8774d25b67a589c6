package peerlisten

import (
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestOneProcessGetsAtMostItsShareAndClosingFreesIt(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	ul, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	ln := New(ul, 8, 2)
	defer ln.Close()
	accepted := make(chan *Conn, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				close(accepted)
				return
			}
			accepted <- c.(*Conn)
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("unix", path)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	// Two connections of this process are accepted and named...
	a, b := dial(), dial()
	defer a.Close()
	defer b.Close()
	first, second := <-accepted, <-accepted
	if first.PID != os.Getpid() || second.PID != os.Getpid() {
		t.Fatalf("peer pids %d, %d; want %d", first.PID, second.PID, os.Getpid())
	}
	// ...a third is closed by the listener at once...
	c := dial()
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 1)); err == nil {
		t.Fatalf("a third connection of one process was served (read %d bytes)", n)
	}
	select {
	case extra := <-accepted:
		t.Fatalf("a third connection was accepted (pid %d)", extra.PID)
	default:
	}
	// ...and once one of the two is closed, a new one is accepted.
	first.Close()
	d := dial()
	defer d.Close()
	select {
	case got := <-accepted:
		got.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("the freed slot was not given to a new connection")
	}
}
