package main

import (
	"context"
	"encoding/binary"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// conns numbers the manager's connections: slot i lives at descriptor
// connBase+i; gen tells a reused slot's connections apart.
type conns struct {
	mu   sync.Mutex
	used [maxConns]bool
	gen  [maxConns]uint32
}

func (t *conns) alloc() (int, uint32, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	for i := range t.used {
		if !t.used[i] {
			t.used[i] = true
			t.gen[i]++
			return i, t.gen[i], true
		}
	}
	return 0, 0, false
}

var table conns // the prototype's one connection table

// serveDirect accepts connections and hands each one to every child and
// to the shared epoll set; after that it is not involved in the
// connection's requests.
func (s *supervisor) serveDirect(ctx context.Context, path string) error {
	lfd, err := listenUnix(path)
	if err != nil {
		return err
	}
	go func() {
		<-ctx.Done()
		_ = unix.Shutdown(lfd, unix.SHUT_RDWR)
	}()
	for {
		fd, _, err := unix.Accept4(lfd, unix.SOCK_CLOEXEC)
		if err != nil {
			if err == unix.EINTR || err == unix.ECONNABORTED {
				continue
			}
			return err
		}
		slot, gen, ok := table.alloc()
		if !ok {
			_ = unix.Close(fd)
			continue
		}
		n := connBase + slot
		if err := unix.Dup3(fd, n, unix.O_CLOEXEC); err != nil {
			return err
		}
		_ = unix.Close(fd)
		msg := make([]byte, 9)
		msg[0] = 'n'
		binary.LittleEndian.PutUint32(msg[1:], uint32(slot))
		binary.LittleEndian.PutUint32(msg[5:], gen)
		for i, c := range s.children {
			if err := sendCtrl(c.ctrl, msg, unix.UnixRights(n)); err != nil {
				return err
			}
			u64(s.mgr, offSent+8*i).Add(1)
		}
		ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(n), Pad: int32(gen)}
		if err := unix.EpollCtl(s.epfd, unix.EPOLL_CTL_ADD, n, &ev); err != nil {
			return err
		}
	}
}

// closed drops a connection a child found closed (or not kept).
func (s *supervisor) closed(slot int, gen uint32) {
	if slot < 0 || slot >= maxConns {
		return // children are hostile: validate what they send
	}
	table.mu.Lock()
	defer table.mu.Unlock()
	if !table.used[slot] || table.gen[slot] != gen {
		return
	}
	n := connBase + slot
	_ = unix.EpollCtl(s.epfd, unix.EPOLL_CTL_DEL, n, nil)
	_ = unix.Shutdown(n, unix.SHUT_RDWR)
	_ = unix.Close(n)
	table.used[slot] = false
}

// direct is a child's loop: take the next ready connection from the
// shared epoll set, read one request, run it, answer, re-arm.
func (k *kid) direct(ctx context.Context) error {
	var gens [maxConns]uint32
	var recvd uint64
	sent := u64(k.mgr, offSent+8*k.index)
	buf, oob := make([]byte, 16), make([]byte, unix.CmsgSpace(4))
	recv := func(flags int) bool {
		n, oobn, _, _, err := unix.Recvmsg(fdCtrl, buf, oob, flags)
		if err != nil || n < 9 {
			return false
		}
		msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
		if len(msgs) != 1 {
			return false
		}
		fds, _ := unix.ParseUnixRights(&msgs[0])
		if len(fds) != 1 {
			return false
		}
		slot, gen := binary.LittleEndian.Uint32(buf[1:]), binary.LittleEndian.Uint32(buf[5:])
		_ = unix.Dup3(fds[0], connBase+int(slot), unix.O_CLOEXEC)
		_ = unix.Close(fds[0])
		gens[slot] = gen
		recvd++
		return true
	}
	var p parser
	p.buf = make([]byte, 0, 16<<10)
	events := make([]unix.EpollEvent, 1)
	for ctx.Err() == nil {
		for recvd < sent.Load() && recv(unix.MSG_DONTWAIT) {
		}
		ev := epollWait(events)
		fd := int(ev.Fd)
		slot, gen := fd-connBase, uint32(ev.Pad)
		if slot < 0 || slot >= maxConns {
			continue
		}
		for gens[slot] != gen && recv(0) {
		}
		k.begin(slot)
		p.reset()
		ok := k.readRequest(fd, &p)
		if ok {
			out := k.g.run(ctx, &p.req)
			k.out = appendResponse(k.out[:0], p.req.id, out)
			ok = writeAll(fd, k.out) == nil && p.req.keep
		}
		k.end()
		if !ok {
			msg := make([]byte, 9)
			msg[0] = 'c'
			binary.LittleEndian.PutUint32(msg[1:], uint32(slot))
			binary.LittleEndian.PutUint32(msg[5:], gen)
			_, _ = unix.Write(fdCtrl, msg)
			continue
		}
		rearm := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLONESHOT, Fd: int32(fd), Pad: int32(gen)}
		_, _, _ = syscall.RawSyscall6(syscall.SYS_EPOLL_CTL, fdEpoll, unix.EPOLL_CTL_MOD, uintptr(fd), uintptr(unsafe.Pointer(&rearm)), 0, 0)
	}
	return ctx.Err()
}

// readRequest reads until one whole request is in; false on EOF or error.
func (k *kid) readRequest(fd int, p *parser) bool {
	for {
		if len(p.buf) == cap(p.buf) {
			p.buf = append(p.buf, make([]byte, cap(p.buf))...)[:len(p.buf)]
		}
		n, e := rawRead(fd, p.buf[len(p.buf):cap(p.buf)])
		switch {
		case e == unix.EAGAIN:
			rawWait(fd, unix.POLLIN)
			continue
		case e == unix.EINTR:
			continue
		case e != 0 || n == 0:
			return false
		}
		p.buf = p.buf[:len(p.buf)+n]
		done, _, err := p.feed()
		if err != nil {
			return false
		}
		if done {
			return true
		}
	}
}

// epollWait takes one event from the shared set, first without telling
// the Go runtime, after 50 ms in a blocking call (an idle child costs
// nothing).
func epollWait(ev []unix.EpollEvent) unix.EpollEvent {
	r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_WAIT, fdEpoll, uintptr(unsafe.Pointer(&ev[0])), 1, 50, 0, 0)
	if e == 0 && r == 1 {
		return ev[0]
	}
	for {
		if n, _ := unix.EpollWait(fdEpoll, ev, -1); n == 1 {
			return ev[0]
		}
	}
}
