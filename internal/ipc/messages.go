package ipc

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

// MountKind says what a Mount's Host is.
type MountKind uint8

// Mount kinds.
const (
	MountDir MountKind = iota // a host directory
	MountMFS                  // a directory in a kubo node's MFS
)

// Mount is a directory made visible to the guest.
type Mount struct {
	Guest    string // absolute path inside the guest, e.g. "/static"
	Kind     MountKind
	Host     string // MountDir: absolute host directory; MountMFS: the manager's MFS proxy ("unix:@name")
	MFSPath  string // MountMFS: the directory in MFS
	ReadOnly bool
	// QuotaBytes and QuotaFiles bound a writable volume: the bytes of its
	// regular files and the number of its entries (files and
	// directories). 0 = no bound.
	QuotaBytes, QuotaFiles uint64
}

// Run asks a child to run a module once.
type Run struct {
	ID          string // request id, for the child's own log lines
	ModuleKey   string // content hash of the module; the child's compile cache key
	ModulePath  string // the module's bytes, content-addressed in state_dir
	MemoryPages uint32 // guest linear memory limit in 64 KiB pages
	Entrypoint  string // export to call; "_start" runs the WASI command
	Args        []string
	Env         []string // "K=V"
	Mounts      []Mount
	Stdin       []byte
	// BodySize, when > 0, is the size of a request body that follows the
	// Run frame in Stdin frames (Stdin is then empty): the manager streams
	// large bodies from its spool instead of holding them in memory to
	// build one frame. The child reads them into Stdin (ReadBody) before
	// it runs the guest, so the guest sees the same stdin either way.
	BodySize int64
	// Body is where WriteRun reads the BodySize bytes from; not encoded.
	Body io.Reader
	// InheritStdio makes the guest use the child's own fds 0, 1 and 2
	// instead of Stdin and Stdout/Stderr frames (wagi-fcgi run).
	InheritStdio bool
	// StderrCap bounds the stderr bytes forwarded for this run; beyond it
	// the child drops output and says so once.
	StderrCap uint32
	// MFSGrant is the token the child sends (MFSGrantHeader) with every
	// call to the MFS proxy for this run's MFS mounts; it is revoked when
	// the run ends.
	MFSGrant string
	// HTTPProxy is the manager's outbound HTTP proxy ("unix:@name") and
	// HTTPGrant this run's token for it (internal/egress); revoked when
	// the run ends.
	HTTPProxy, HTTPGrant string
}

// MFSGrantHeader carries Run.MFSGrant on the child's calls to the MFS
// proxy.
const MFSGrantHeader = "X-Wagi-Mfs-Grant"

// Outcome says how a run ended.
type Outcome uint8

// Outcomes of a run.
const (
	OutcomeOK           Outcome = iota // returned, or proc_exit(0)
	OutcomeExit                        // proc_exit with a non-zero code
	OutcomeTrap                        // a trap or another runtime error
	OutcomeLoad                        // the module could not be compiled or instantiated
	OutcomeNoEntrypoint                // the entrypoint is not an exported function
)

func (o Outcome) String() string {
	switch o {
	case OutcomeOK:
		return "ok"
	case OutcomeExit:
		return "exit"
	case OutcomeTrap:
		return "trap"
	case OutcomeLoad:
		return "load error"
	case OutcomeNoEntrypoint:
		return "no entrypoint"
	}
	return fmt.Sprintf("outcome(%d)", uint8(o))
}

// Done reports the end of a run.
type Done struct {
	Outcome  Outcome
	ExitCode uint32
	Message  string // the error text for anything but OutcomeOK
}

var errShort = errors.New("ipc: short payload")

// AppendRun appends the encoding of m to b.
func AppendRun(b []byte, m *Run) []byte {
	b = appendString(b, m.ID)
	b = appendString(b, m.ModuleKey)
	b = appendString(b, m.ModulePath)
	b = binary.BigEndian.AppendUint32(b, m.MemoryPages)
	b = appendString(b, m.Entrypoint)
	b = appendStrings(b, m.Args)
	b = appendStrings(b, m.Env)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Mounts)))
	for _, mt := range m.Mounts {
		b = appendString(b, mt.Guest)
		b = append(b, byte(mt.Kind))
		b = appendString(b, mt.Host)
		b = appendString(b, mt.MFSPath)
		b = appendBool(b, mt.ReadOnly)
		b = binary.BigEndian.AppendUint64(b, mt.QuotaBytes)
		b = binary.BigEndian.AppendUint64(b, mt.QuotaFiles)
	}
	b = appendBytes(b, m.Stdin)
	b = binary.BigEndian.AppendUint64(b, uint64(m.BodySize))
	b = appendBool(b, m.InheritStdio)
	b = binary.BigEndian.AppendUint32(b, m.StderrCap)
	b = appendString(b, m.MFSGrant)
	b = appendString(b, m.HTTPProxy)
	b = appendString(b, m.HTTPGrant)
	return b
}

// DecodeRun decodes a Run payload. Strings and Stdin are copied, so m does
// not alias p.
func DecodeRun(p []byte, m *Run) error {
	d := decoder{p: p}
	m.ID = d.string()
	m.ModuleKey = d.string()
	m.ModulePath = d.string()
	m.MemoryPages = d.u32()
	m.Entrypoint = d.string()
	m.Args = d.strings()
	m.Env = d.strings()
	n := d.count(30)
	m.Mounts = nil
	for i := 0; i < n && d.err == nil; i++ {
		m.Mounts = append(m.Mounts, Mount{Guest: d.string(), Kind: MountKind(d.u8()), Host: d.string(), MFSPath: d.string(), ReadOnly: d.bool(),
			QuotaBytes: d.u64(), QuotaFiles: d.u64()})
	}
	m.Stdin = d.bytes()
	m.BodySize = int64(d.u64())
	m.Body = nil
	m.InheritStdio = d.bool()
	m.StderrCap = d.u32()
	m.MFSGrant = d.string()
	m.HTTPProxy = d.string()
	m.HTTPGrant = d.string()
	return d.finish("run")
}

// bodyChunk is the payload size of the Stdin frames of a streamed body.
const bodyChunk = 64 << 10

// WriteRun writes a Run frame, encoded into buf (returned for reuse), and
// then, when m.BodySize > 0, the body from m.Body in Stdin frames, and
// flushes. A body shorter than BodySize is an error.
func (w *Writer) WriteRun(buf []byte, m *Run) ([]byte, error) {
	if m.BodySize > 0 && (m.Body == nil || len(m.Stdin) > 0) {
		return buf, errors.New("ipc: a streamed body needs Body and an empty Stdin")
	}
	buf = AppendRun(buf, m)
	if err := w.WriteFrame(TypeRun, buf); err != nil {
		return buf, err
	}
	if m.BodySize > 0 {
		if cap(w.chunk) < bodyChunk {
			w.chunk = make([]byte, bodyChunk)
		}
		for left := m.BodySize; left > 0; {
			n, err := io.ReadFull(m.Body, w.chunk[:min(left, bodyChunk)])
			if err != nil {
				return buf, fmt.Errorf("ipc: read request body (%d of %d bytes left): %w", left, m.BodySize, err)
			}
			if err := w.WriteFrame(TypeStdin, w.chunk[:n]); err != nil {
				return buf, err
			}
			left -= int64(n)
		}
	}
	return buf, w.Flush()
}

// ReadBody reads the Stdin frames of a streamed body (m.BodySize > 0)
// into m.Stdin; a Run without one is left alone.
func ReadBody(r *Reader, m *Run) error {
	if m.BodySize <= 0 {
		return nil
	}
	if m.BodySize > MaxPayload {
		return fmt.Errorf("ipc: request body of %d bytes is over %d", m.BodySize, MaxPayload)
	}
	body := make([]byte, 0, m.BodySize)
	for int64(len(body)) < m.BodySize {
		t, p, err := r.ReadFrame()
		if err != nil {
			return fmt.Errorf("ipc: read request body: %w", err)
		}
		if t != TypeStdin {
			return fmt.Errorf("ipc: %s frame inside a request body", t)
		}
		if int64(len(body)+len(p)) > m.BodySize {
			return fmt.Errorf("ipc: request body longer than the %d bytes announced", m.BodySize)
		}
		body = append(body, p...)
	}
	m.Stdin = body
	return nil
}

// AppendDone appends the encoding of m to b.
func AppendDone(b []byte, m *Done) []byte {
	b = append(b, byte(m.Outcome))
	b = binary.BigEndian.AppendUint32(b, m.ExitCode)
	return appendString(b, m.Message)
}

// DecodeDone decodes a Done payload.
func DecodeDone(p []byte, m *Done) error {
	d := decoder{p: p}
	m.Outcome = Outcome(d.u8())
	m.ExitCode = d.u32()
	m.Message = d.string()
	return d.finish("done")
}

func appendString(b []byte, s string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func appendBytes(b []byte, s []byte) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func appendStrings(b []byte, ss []string) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(ss)))
	for _, s := range ss {
		b = appendString(b, s)
	}
	return b
}

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 1)
	}
	return append(b, 0)
}

// decoder reads fields in order and remembers the first error, so callers
// decode a whole message and check once.
type decoder struct {
	p   []byte
	err error
}

func (d *decoder) take(n int) []byte {
	if d.err != nil {
		return nil
	}
	if n < 0 || n > len(d.p) {
		d.err = errShort
		return nil
	}
	v := d.p[:n]
	d.p = d.p[n:]
	return v
}

func (d *decoder) u8() uint8 {
	v := d.take(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (d *decoder) u32() uint32 {
	v := d.take(4)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func (d *decoder) u64() uint64 {
	v := d.take(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func (d *decoder) bool() bool { return d.u8() != 0 }

func (d *decoder) string() string { return string(d.take(int(d.u32()))) }

func (d *decoder) bytes() []byte {
	v := d.take(int(d.u32()))
	if len(v) == 0 {
		return nil
	}
	return append([]byte(nil), v...)
}

// count reads an element count and rejects one that cannot fit in what is
// left, given each element needs at least min bytes.
func (d *decoder) count(min int) int {
	n := int(d.u32())
	if d.err == nil && n*min > len(d.p) {
		d.err = errShort
		return 0
	}
	return n
}

func (d *decoder) strings() []string {
	n := d.count(4)
	if n == 0 {
		return nil
	}
	ss := make([]string, 0, n)
	for i := 0; i < n && d.err == nil; i++ {
		ss = append(ss, d.string())
	}
	return ss
}

func (d *decoder) finish(what string) error {
	if d.err == nil && len(d.p) != 0 {
		d.err = fmt.Errorf("%d trailing bytes", len(d.p))
	}
	if d.err != nil {
		return fmt.Errorf("ipc: decode %s: %w", what, d.err)
	}
	return nil
}

// Module names a compiled module for Preload.
type Module struct {
	Key         string
	Path        string
	MemoryPages uint32
}

// AppendPreload appends the encoding of a preload list to b.
func AppendPreload(b []byte, mods []Module) []byte {
	b = binary.BigEndian.AppendUint32(b, uint32(len(mods)))
	for _, m := range mods {
		b = appendString(b, m.Key)
		b = appendString(b, m.Path)
		b = binary.BigEndian.AppendUint32(b, m.MemoryPages)
	}
	return b
}

// DecodePreload decodes a preload list.
func DecodePreload(p []byte) ([]Module, error) {
	d := decoder{p: p}
	n := d.count(12)
	var mods []Module
	for i := 0; i < n && d.err == nil; i++ {
		mods = append(mods, Module{Key: d.string(), Path: d.string(), MemoryPages: d.u32()})
	}
	return mods, d.finish("preload")
}

// Route is one route a child may answer by itself on the fast path, in
// the manager's table order (its index is the route's number in the
// scoreboard). Fast is false for routes only the manager may answer
// (volumes, outbound HTTP, a concurrency limit, a module not loaded): the
// child hands their requests to the manager.
type Route struct {
	Pattern      string
	Fast         bool
	ModuleKey    string
	ModulePath   string
	MemoryPages  uint32
	Entrypoint   string
	ArgvTemplate string
	Env          []string // the module's environment, "K=V", in order
	MaxBody      int64
	MaxOutput    int64
	StderrCap    uint32
}

// Routes is the payload of TypeRoutes.
type Routes struct {
	ServerSoftware string
	IDPrefix       string // request ids of this child are IDPrefix + "-" + a counter
	// Reserved are paths the manager answers itself (the status page,
	// /healthz); ReservedPrefix, if not "", a prefix it does (the
	// gateway's). Their requests are handed to the manager.
	Reserved       []string
	ReservedPrefix string
	Routes         []Route
}

// AppendRoutes appends the encoding of m to b.
func AppendRoutes(b []byte, m *Routes) []byte {
	b = appendString(b, m.ServerSoftware)
	b = appendString(b, m.IDPrefix)
	b = appendStrings(b, m.Reserved)
	b = appendString(b, m.ReservedPrefix)
	b = binary.BigEndian.AppendUint32(b, uint32(len(m.Routes)))
	for i := range m.Routes {
		r := &m.Routes[i]
		b = appendString(b, r.Pattern)
		b = appendBool(b, r.Fast)
		b = appendString(b, r.ModuleKey)
		b = appendString(b, r.ModulePath)
		b = binary.BigEndian.AppendUint32(b, r.MemoryPages)
		b = appendString(b, r.Entrypoint)
		b = appendString(b, r.ArgvTemplate)
		b = appendStrings(b, r.Env)
		b = binary.BigEndian.AppendUint64(b, uint64(r.MaxBody))
		b = binary.BigEndian.AppendUint64(b, uint64(r.MaxOutput))
		b = binary.BigEndian.AppendUint32(b, r.StderrCap)
	}
	return b
}

// DecodeRoutes decodes a TypeRoutes payload.
func DecodeRoutes(p []byte) (*Routes, error) {
	d := decoder{p: p}
	m := &Routes{ServerSoftware: d.string(), IDPrefix: d.string(), Reserved: d.strings(), ReservedPrefix: d.string()}
	n := d.count(4)
	for i := 0; i < n && d.err == nil; i++ {
		m.Routes = append(m.Routes, Route{
			Pattern: d.string(), Fast: d.bool(), ModuleKey: d.string(), ModulePath: d.string(),
			MemoryPages: d.u32(), Entrypoint: d.string(), ArgvTemplate: d.string(), Env: d.strings(),
			MaxBody: int64(d.u64()), MaxOutput: int64(d.u64()), StderrCap: d.u32(),
		})
	}
	return m, d.finish("routes")
}
