package main

import (
	"context"
	"encoding/binary"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// serveHandback reads requests in the manager, as today, but the child
// answers the web server itself and frees itself through shared memory.
func (s *supervisor) serveHandback(ctx context.Context, path string) error {
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return err
	}
	if err := os.Chmod(path, 0o666); err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		_ = ln.Close()
	}()
	h := &handback{s: s, free: s.free}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go h.serveConn(c.(*net.UnixConn))
	}
}

type handback struct {
	s    *supervisor
	mu   sync.Mutex // held while choosing a child and sending it a request
	free chan struct{}
	next int
}

func (h *handback) serveConn(c *net.UnixConn) {
	defer c.Close()
	slot, gen, ok := table.alloc()
	if !ok {
		return
	}
	defer func() {
		table.mu.Lock()
		table.used[slot] = false
		table.mu.Unlock()
	}()
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	var fd int
	_ = raw.Control(func(f uintptr) { fd = int(f) })
	var p parser
	p.buf = make([]byte, 0, 16<<10)
	var msg []byte
	for {
		if len(p.buf) == cap(p.buf) {
			p.buf = append(p.buf, make([]byte, cap(p.buf))...)[:len(p.buf)]
		}
		n, err := c.Read(p.buf[len(p.buf):cap(p.buf)])
		if err != nil {
			return
		}
		p.buf = p.buf[:len(p.buf)+n]
		done, _, err := p.feed()
		if err != nil {
			return
		}
		if !done {
			continue
		}
		msg = append(msg[:0], 'r')
		msg = binary.LittleEndian.AppendUint32(msg, uint32(slot))
		msg = binary.LittleEndian.AppendUint32(msg, gen)
		msg = binary.LittleEndian.AppendUint16(msg, p.req.id)
		keep := byte(0)
		if p.req.keep {
			keep = 1
		}
		msg = append(msg, keep)
		msg = binary.LittleEndian.AppendUint32(msg, uint32(len(p.req.params)))
		msg = append(msg, p.req.params...)
		msg = append(msg, p.req.body...)
		if err := h.dispatch(slot, gen, fd, msg); err != nil {
			return
		}
		p.reset()
	}
}

// dispatch gives msg to a free child, with the connection's descriptor
// the first time that child answers on it.
func (h *handback) dispatch(slot int, gen uint32, fd int, msg []byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	c := h.acquire()
	var oob []byte
	if c.gens[slot] != gen {
		oob = unix.UnixRights(fd)
		c.gens[slot] = gen
	}
	return sendCtrl(c.ctrl, msg, oob)
}

// acquire returns a child that has finished every request it was given;
// when there is none it sleeps until one says it is free (it does so
// only while the manager's wait epoch is odd).
func (h *handback) acquire() *child {
	wait := u64(h.s.mgr, offWait)
	pick := func() *child {
		n := len(h.s.children)
		for j := range n {
			c := h.s.children[(h.next+j)%n]
			if u64(c.slot, offDone).Load() == c.assigned {
				c.assigned++
				h.next = (h.next + j + 1) % n
				return c
			}
		}
		return nil
	}
	for {
		if c := pick(); c != nil {
			return c
		}
		wait.Add(1) // odd: children tell us when they are free
		c := pick()
		if c == nil {
			<-h.free
			c = pick()
		}
		wait.Add(1)
		if c != nil {
			return c
		}
	}
}

// handback is a child's loop: a request arrives on the control socket,
// the answer goes straight to the web server.
func (k *kid) handback(ctx context.Context) error {
	var fds [maxConns]int
	for i := range fds {
		fds[i] = -1
	}
	buf, oob := make([]byte, 1<<20), make([]byte, unix.CmsgSpace(4))
	var woke uint64
	for ctx.Err() == nil {
		rawWait(fdCtrl, unix.POLLIN)
		n, oobn, _, _, err := unix.Recvmsg(fdCtrl, buf, oob, unix.MSG_DONTWAIT)
		if err == unix.EAGAIN || err == unix.EINTR {
			continue
		}
		if err != nil || n == 0 {
			return err
		}
		if n < 16 || buf[0] != 'r' {
			continue
		}
		slot := int(binary.LittleEndian.Uint32(buf[1:]))
		if slot >= maxConns {
			continue
		}
		if oobn > 0 {
			if msgs, _ := unix.ParseSocketControlMessage(oob[:oobn]); len(msgs) == 1 {
				if got, _ := unix.ParseUnixRights(&msgs[0]); len(got) == 1 {
					if fds[slot] >= 0 {
						_ = unix.Close(fds[slot])
					}
					fds[slot] = got[0]
				}
			}
		}
		plen := int(binary.LittleEndian.Uint32(buf[12:]))
		if 16+plen > n {
			continue
		}
		req := request{id: binary.LittleEndian.Uint16(buf[9:]), keep: buf[11] == 1, params: buf[16 : 16+plen], body: buf[16+plen : n]}
		k.begin(slot)
		out := k.g.run(ctx, &req)
		k.out = appendResponse(k.out[:0], req.id, out)
		fd := fds[slot]
		if writeAll(fd, k.out) != nil || !req.keep {
			_ = unix.Shutdown(fd, unix.SHUT_RDWR)
		}
		k.end()
		if e := u64(k.mgr, offWait).Load(); e&1 == 1 && e != woke {
			woke = e
			_, _ = unix.Write(fdCtrl, []byte{'f'})
		}
	}
	return ctx.Err()
}
