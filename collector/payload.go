package collector

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"
	"unsafe"

	"github.com/callscope/callscope/collector/tlshello"
	"github.com/callscope/callscope/internal/cookieindex"
)

// Payload records are a struct event followed by a few fields and the
// bytes copied from a packet.
var (
	payloadHeaderSize = int(unsafe.Offsetof(connectPayloadEvent{}.Data))
	offPayloadOffset  = unsafe.Offsetof(connectPayloadEvent{}.Offset)
	offPayloadLen     = unsafe.Offsetof(connectPayloadEvent{}.Len)
	offPayloadWant    = unsafe.Offsetof(connectPayloadEvent{}.Want)
	offPayloadMore    = unsafe.Offsetof(connectPayloadEvent{}.More)
	offPayloadProto   = unsafe.Offsetof(connectPayloadEvent{}.Proto)
	payloadMax        = int(connectLimitPAYLOAD_MAX)
)

const ipprotoTCP = 6

// payload is a decoded payload record; data points into the ring buffer
// and is valid only until the next read.
type payload struct {
	kind   connectKind
	head   Event // the caller and addresses, as for a connect
	offset int
	want   int
	more   bool
	tcp    bool
	data   []byte
}

func decodePayload(b []byte, bootOffset int64, p *payload) error {
	if len(b) < payloadHeaderSize {
		return fmt.Errorf("%w: payload record of %d bytes", ErrMalformed, len(b))
	}
	ne := binary.NativeEndian
	n := int(ne.Uint16(b[offPayloadLen:]))
	if (n == 0 && connectKind(b[offKind]) != connectKindKIND_EXEC) || n > payloadMax || payloadHeaderSize+n > len(b) {
		return fmt.Errorf("%w: payload of %d bytes in a record of %d", ErrMalformed, n, len(b))
	}
	p.kind = connectKind(b[offKind])
	p.offset = int(ne.Uint16(b[offPayloadOffset:]))
	p.want = int(ne.Uint16(b[offPayloadWant:]))
	p.more = b[offPayloadMore] != 0
	p.tcp = b[offPayloadProto] == ipprotoTCP
	p.data = b[payloadHeaderSize : payloadHeaderSize+n]

	decodeHeader(b, bootOffset, &p.head)
	if p.kind == connectKindKIND_EXEC {
		p.head.Kind = KindExec
		p.head.Exec = decodeExec(p.data, p.offset, p.want, p.more, ne.Uint32(b[offAux:]))
		return nil
	}
	var err error
	p.head.Src, p.head.Dst, err = decodeAddrs(b)
	return err
}

// HelloStats counts the TLS handshakes and DNS answers the kernel passed up.
type HelloStats struct {
	ClientHellos uint64 // tls events made
	Truncated    uint64 // of them, ClientHellos cut short (too long, or a gap in what was seen)
	Unparsable   uint64 // first flights that looked like TLS and did not parse: no tls event
	ServerHellos uint64 // ServerHellos joined to their tls event
	Dropped      uint64 // handshakes not followed because too many were being put together
	// Unattributed counts tls events whose connect was no longer known:
	// they carry the socket's cgroup, but no process.
	Unattributed uint64
	DNSAnswers   uint64 // DNS payloads handed on
}

// helloWait bounds how long a ClientHello waits for its remaining segments
// or for the server's answer before its tls event goes without them.
const helloWait = time.Second

// maxAssembling bounds the handshakes put together at once: each holds a
// few KiB at most.
const maxAssembling = 8192

// maxCallers is how many established connects' callers are kept for a
// ClientHello still to come, by exact cookie: the last maxCallers, about
// 0.3 s at 28,000 connects/s. A client sends its hello as soon as it is
// connected.
const maxCallers = 8192

// callerRing keeps the callers of the last maxCallers established
// connects, each found by its cookie. The oldest makes room for the
// newest; one taken leaves its slot to be reused in turn.
type callerRing struct {
	index cookieindex.Index // cookie to slot
	slots []ringCaller
	next  int32 // the slot the next caller goes to
}

type ringCaller struct {
	cookie uint64
	caller caller
}

func newCallerRing() *callerRing {
	return &callerRing{slots: make([]ringCaller, maxCallers)}
}

func (r *callerRing) put(cookie uint64, c *caller) {
	i := r.next
	r.next = (i + 1) % int32(len(r.slots))
	// The slot's last caller leaves, unless it was taken already (its
	// cookie is then not indexed, or indexed to a later slot).
	if old := r.slots[i].cookie; old != cookie {
		if j, ok := r.index.Get(old); ok && j == i {
			r.index.Delete(old)
		}
	}
	r.slots[i] = ringCaller{cookie: cookie, caller: *c}
	r.index.Put(cookie, i)
}

// take removes and returns the caller kept for cookie.
func (r *callerRing) take(cookie uint64) (caller, bool) {
	i, ok := r.index.Delete(cookie)
	if !ok {
		return caller{}, false
	}
	return r.slots[i].caller, true
}

func (r *callerRing) len() int { return r.index.Len() }

type assembly struct {
	ev       Event // the tls event being made: caller, addresses, time
	buf      []byte
	want     int
	gap      bool // bytes are missing: the hello is cut where they start
	hello    *tlshello.ClientHello
	deadline time.Time
}

// assembler joins the pieces of each connection's ClientHello and its
// ServerHello into one tls event. It belongs to the read goroutine.
type assembler struct {
	conns   map[uint64]*assembly
	callers *callerRing // of established connects
	stats   HelloStats
	emit    func(*Event)
}

func newAssembler(emit func(*Event)) *assembler {
	return &assembler{conns: make(map[uint64]*assembly), callers: newCallerRing(), emit: emit}
}

// connected keeps the caller of an established connect for its ClientHello.
func (a *assembler) connected(cookie uint64, c *caller) {
	a.callers.put(cookie, c)
}

func (a *assembler) add(p *payload, now time.Time) {
	switch p.kind {
	case connectKindKIND_DNS:
		ev := p.head
		ev.Kind = KindDNS
		ev.DNS = append([]byte(nil), p.data...)
		ev.DNSOverTCP = p.tcp
		a.stats.DNSAnswers++
		a.emit(&ev)
	case connectKindKIND_EXEC:
		a.emit(&p.head)
	case connectKindKIND_TLS_CLIENT:
		a.client(p, now)
	case connectKindKIND_TLS_SERVER:
		as, ok := a.conns[p.head.Cookie]
		if !ok {
			return // its ClientHello was not followed, or was unparsable
		}
		if as.hello == nil {
			a.finishClient(p.head.Cookie, as)
			if as.hello == nil {
				return
			}
		}
		if sh, err := tlshello.ParseServerHello(p.data); err == nil {
			as.ev.ServerHello = sh
			a.stats.ServerHellos++
		}
		a.send(p.head.Cookie, as)
	}
}

func (a *assembler) client(p *payload, now time.Time) {
	cookie := p.head.Cookie
	as, ok := a.conns[cookie]
	if p.offset == 0 {
		if ok {
			return // a copy of what was seen: the kernel starts each connection once
		}
		if len(a.conns) >= maxAssembling {
			a.stats.Dropped++
			return
		}
		want := max(p.want, len(p.data))
		as = &assembly{ev: p.head, want: want, buf: make([]byte, 0, want), deadline: now.Add(helloWait)}
		as.ev.Kind = KindTLS
		// A connection starts one ClientHello: its caller is taken.
		if c, ok := a.callers.take(cookie); ok {
			c.applyTo(&as.ev)
		} else {
			a.stats.Unattributed++
		}
		as.gap = p.more
		a.conns[cookie] = as
	} else if !ok || as.hello != nil {
		return
	} else if p.offset != len(as.buf) {
		as.gap = true
		a.finishClient(cookie, as)
		return
	}
	as.buf = append(as.buf, p.data[:min(len(p.data), as.want-len(as.buf))]...)
	if len(as.buf) >= as.want {
		a.finishClient(cookie, as)
	}
}

// finishClient parses a ClientHello whose bytes are all in, or will not
// come, and leaves it to wait for the server's answer.
func (a *assembler) finishClient(cookie uint64, as *assembly) {
	h, err := tlshello.ParseClientHello(as.buf)
	if err != nil {
		a.stats.Unparsable++
		delete(a.conns, cookie)
		return
	}
	if as.gap && !h.Truncated {
		// Bytes went missing after the hello: what was parsed is whole,
		// but say the capture was cut, and give no fingerprint of it.
		h.Truncated, h.JA4 = true, ""
	}
	as.hello, as.ev.Hello, as.buf = h, h, nil
}

func (a *assembler) send(cookie uint64, as *assembly) {
	delete(a.conns, cookie)
	a.stats.ClientHellos++
	if as.hello.Truncated {
		a.stats.Truncated++
	}
	a.emit(&as.ev)
}

// expire sends what waited past its deadline, or everything when all is
// set (the collector is closing).
func (a *assembler) expire(now time.Time, all bool) {
	for cookie, as := range a.conns {
		if !all && now.Before(as.deadline) {
			continue
		}
		if as.hello == nil {
			as.gap = as.gap || len(as.buf) < as.want
			a.finishClient(cookie, as)
			if as.hello == nil {
				continue
			}
		}
		a.send(cookie, as)
	}
}

// Exec is what execve told of a process: the facts a process that is gone
// before /proc is read keeps.
type Exec struct {
	// Path is the file as execve was given it: not resolved, and relative
	// to the caller's working directory when it does not start with '/'.
	Path string
	Args []string
	// ArgsTruncated says the arguments went on past what was copied.
	ArgsTruncated bool
	PPID          uint32
}

// Where the kernel puts an exec's arguments in a payload record.
const execPathMax = int(connectLimitEXEC_PATH_MAX)

var offAux = unsafe.Offsetof(connectEvent{}.Aux)

func decodeExec(data []byte, pathLen, argsLen int, more bool, ppid uint32) *Exec {
	x := &Exec{PPID: ppid, ArgsTruncated: more}
	if pathLen > 0 && pathLen <= execPathMax && pathLen <= len(data) {
		x.Path = string(bytes.TrimRight(data[:pathLen], "\x00"))
	}
	if argsLen > 0 && execPathMax+argsLen <= len(data) {
		args := bytes.TrimRight(data[execPathMax:execPathMax+argsLen], "\x00")
		if len(args) > 0 {
			for a := range bytes.SplitSeq(args, []byte{0}) {
				x.Args = append(x.Args, string(a))
			}
		}
	}
	return x
}
