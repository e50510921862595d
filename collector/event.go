package collector

import (
	"encoding/binary"
	"fmt"
	"net/netip"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/callscope/callscope/collector/tlshello"
)

// Kind says what an Event reports.
type Kind uint8

const (
	KindConnect Kind = iota + 1 // an outbound TCP connect and its outcome
	KindLoss                    // events lost before they reached the stream
	// KindExit says a process ended (PID and ProcStart are set). It tells
	// enrichment to forget the process and is never written to the stream.
	KindExit
	// KindTLS reports a TLS ClientHello sent on an outbound connection.
	KindTLS
	// KindVerdict closes a pending scope verdict whose TLS server name
	// never came. It is made by scope, not by the kernel.
	KindVerdict
	// KindDNS carries a DNS answer received on the node. Enrichment learns
	// names from it; it is not written to the stream.
	KindDNS
	// KindExec says a process ran execve (Exec is set). Enrichment keeps it
	// for a process gone before /proc is read; it is not written.
	KindExec

	// NumKinds sizes arrays by kind; keep it last.
	NumKinds
)

func (k Kind) String() string {
	switch k {
	case KindConnect:
		return "connect"
	case KindLoss:
		return "loss"
	case KindExit:
		return "exit"
	case KindTLS:
		return "tls"
	case KindVerdict:
		return "verdict"
	case KindDNS:
		return "dns"
	case KindExec:
		return "exec"
	}
	return "unknown"
}

// Outcome is how an outbound connect ended, in the contract's words.
type Outcome uint8

const (
	OutcomeUnknown Outcome = iota
	OutcomeEstablished
	OutcomeRefused
	OutcomeTimeout
	OutcomeUnreachable
	OutcomeReset
	OutcomeFailed
)

func (o Outcome) String() string {
	switch o {
	case OutcomeEstablished:
		return "established"
	case OutcomeRefused:
		return "refused"
	case OutcomeTimeout:
		return "timeout"
	case OutcomeUnreachable:
		return "unreachable"
	case OutcomeReset:
		return "reset"
	case OutcomeFailed:
		return "failed"
	}
	return "unknown"
}

// Loss stages and reasons, the values of a loss event and of the loss metric.
const (
	StageKernel = "kernel" // in the BPF programs, or in tracking their connects
	StageQueue  = "queue"  // between the ring buffer reader and the pipeline

	ReasonRingBufferFull = "ring_buffer_full" // bpf_ringbuf_reserve failed
	ReasonConnFull       = "conn_full"        // more connects awaiting their outcome than Config.MaxInFlight
	ReasonConnExpired    = "conn_expired"     // a connect whose outcome never came (forgotten after Config.ConnExpiry)
	ReasonPendingFull    = "pending_full"     // no room to remember a connect(2) in flight: a failure inside the syscall goes unreported
	ReasonQueueFull      = "queue_full"       // the pipeline did not keep up
	ReasonMalformed      = "malformed"        // a record that did not decode
)

// Event is what the kernel reported, decoded. It holds no pointers to
// per-event memory, so batches of them are reused without allocation.
type Event struct {
	Kind    Kind
	Outcome Outcome
	// Errno is the error behind a failed connect: sk_err for a socket that
	// closed before it was established, or connect(2)'s error when it failed
	// before a SYN was sent. Zero when the caller closed the socket first.
	Errno unix.Errno
	// Time is when the outcome was known, in Unix nanoseconds.
	Time int64
	// Cookie is the socket cookie: it joins every event of one connection.
	Cookie   uint64
	Src, Dst netip.AddrPort

	PID, TID uint32 // thread-group id (what ps shows) and thread id
	UID, GID uint32
	Comm     [16]byte // NUL padded
	CgroupID uint64
	// ProcStart is when the process (thread-group leader) started, in
	// nanoseconds since boot. With PID it names one process even after the
	// PID is reused.
	ProcStart uint64
	NetNS     uint32 // network namespace inode of the socket
	// TTY says the caller had a controlling terminal at the connect, and
	// LoginUID is its audit login uid (LoginUIDUnset when unset, or where
	// the kernel keeps none): the marks of a person's session.
	TTY      bool
	LoginUID uint32
	// Plaintext says the first data of this established connect, to a
	// port where TLS is expected (Config.TLSPorts), was no TLS handshake.
	Plaintext bool

	// For KindTLS: the ClientHello, and the ServerHello when one was seen
	// (nil otherwise). They are allocated per event and never reused.
	Hello       *tlshello.ClientHello
	ServerHello *tlshello.ServerHello

	// For KindDNS: the answer's bytes (allocated per event), as carried by
	// UDP, or by TCP with its length prefix; NetNS is the receiving
	// socket's network namespace and CgroupID its cgroup.
	DNS        []byte
	DNSOverTCP bool

	// For KindExec.
	Exec *Exec

	// For KindLoss.
	Lost       uint64
	LossStage  string
	LossReason string
}

// LoginUIDUnset is the login uid of a process no login session set
// (AUDIT_UID_UNSET).
const LoginUIDUnset = ^uint32(0)

// CommString returns the command name without its NUL padding.
func (e *Event) CommString() string {
	n := 0
	for n < len(e.Comm) && e.Comm[n] != 0 {
		n++
	}
	return string(e.Comm[:n])
}

// IPv6 reports whether the connection is IPv6 on the wire. An IPv6 socket
// connecting to an IPv4-mapped address speaks IPv4, and is reported so.
func (e *Event) IPv6() bool { return e.Dst.Addr().Is6() }

const (
	afInet  = 2
	afInet6 = 10
)

// Offsets into the kernel's records, taken from the generated types so
// that a layout change in the C code cannot silently skew the decoder.
// Every record starts with a struct header, whose first byte is its kind.
var (
	headerSize = int(unsafe.Sizeof(connectHeader{}))
	offKind    = unsafe.Offsetof(connectHeader{}.Kind)
	offOutcome = unsafe.Offsetof(connectHeader{}.Outcome)
	offFamily  = unsafe.Offsetof(connectHeader{}.Family)
	offErr     = unsafe.Offsetof(connectHeader{}.Err)
	offCookie  = unsafe.Offsetof(connectHeader{}.Cookie)
	offTs      = unsafe.Offsetof(connectHeader{}.TsNs)

	// A struct event: the header, the caller and the addresses.
	recordSize   = int(unsafe.Sizeof(connectEvent{}))
	offCaller    = unsafe.Offsetof(connectEvent{}.Caller)
	offCgroup    = offCaller + unsafe.Offsetof(connectCaller{}.CgroupId)
	offTaskStart = offCaller + unsafe.Offsetof(connectCaller{}.TaskStart)
	offTgid      = offCaller + unsafe.Offsetof(connectCaller{}.Tgid)
	offTid       = offCaller + unsafe.Offsetof(connectCaller{}.Tid)
	offUID       = offCaller + unsafe.Offsetof(connectCaller{}.Uid)
	offGID       = offCaller + unsafe.Offsetof(connectCaller{}.Gid)
	offNetns     = offCaller + unsafe.Offsetof(connectCaller{}.Netns)
	offComm      = offCaller + unsafe.Offsetof(connectCaller{}.Comm)
	offLoginUID  = offCaller + unsafe.Offsetof(connectCaller{}.LoginUid)
	offTTY       = offCaller + unsafe.Offsetof(connectCaller{}.Tty)
	offSaddr     = unsafe.Offsetof(connectEvent{}.Saddr)
	offDaddr     = unsafe.Offsetof(connectEvent{}.Daddr)
	offSport     = unsafe.Offsetof(connectEvent{}.Sport)
	offDport     = unsafe.Offsetof(connectEvent{}.Dport)
)

// recordKind is what a record says it is: its first byte. The read loop
// switches on it.
func recordKind(b []byte) connectKind {
	if len(b) < headerSize {
		return 0
	}
	return connectKind(b[offKind])
}

// ErrMalformed is returned for a record that is not a valid kernel event.
var ErrMalformed = fmt.Errorf("malformed record")

// Decode fills e from one ring buffer record. bootOffset converts the
// kernel's boot-time clock to Unix time. It never allocates.
func (e *Event) Decode(b []byte, bootOffset int64) error {
	if len(b) != recordSize {
		return fmt.Errorf("%w: %d bytes, want %d", ErrMalformed, len(b), recordSize)
	}
	switch connectKind(b[offKind]) {
	case connectKindKIND_CONNECT:
	case connectKindKIND_EXIT:
		decodeHeader(b, bootOffset, e)
		e.Kind = KindExit
		return nil
	default:
		return fmt.Errorf("%w: kind %d", ErrMalformed, b[offKind])
	}
	errno := int32(binary.NativeEndian.Uint32(b[offErr:]))
	if errno < 0 {
		return fmt.Errorf("%w: errno %d", ErrMalformed, errno)
	}
	outcome, err := outcomeOf(connectOutcome(b[offOutcome]), unix.Errno(errno))
	if err != nil {
		return err
	}
	decodeHeader(b, bootOffset, e)
	if e.Src, e.Dst, err = decodeAddrs(b); err != nil {
		return err
	}
	e.Kind, e.Outcome, e.Errno = KindConnect, outcome, unix.Errno(errno)
	if connectOutcome(b[offOutcome]) == connectOutcomeOUTCOME_UNSENT {
		// No SYN was sent, so no source address was chosen.
		e.Src = netip.AddrPort{}
	}
	return nil
}

// started is what a start record says of a connect: all of its event but
// the outcome and its time.
type started struct {
	caller   caller
	src, dst netip.AddrPort
	time     int64 // when connect(2) was called, Unix ns
}

// decodeStart reads a start record.
func decodeStart(b []byte, bootOffset int64) (cookie uint64, st started, err error) {
	if len(b) != recordSize || recordKind(b) != connectKindKIND_CONNECT_START {
		return 0, started{}, fmt.Errorf("%w: not a start record of %d bytes", ErrMalformed, recordSize)
	}
	if st.src, st.dst, err = decodeAddrs(b); err != nil {
		return 0, started{}, err
	}
	ne := binary.NativeEndian
	st.caller = decodeCaller(b)
	st.time = int64(ne.Uint64(b[offTs:])) + bootOffset
	return ne.Uint64(b[offCookie:]), st, nil
}

// outcomeRecord is a decoded outcome record.
type outcomeRecord struct {
	cookie  uint64
	ts      int64 // ns since boot
	outcome Outcome
	errno   unix.Errno
}

func decodeOutcome(b []byte) (outcomeRecord, error) {
	ne := binary.NativeEndian
	if len(b) != headerSize || recordKind(b) != connectKindKIND_OUTCOME {
		return outcomeRecord{}, fmt.Errorf("%w: not an outcome record of %d bytes", ErrMalformed, headerSize)
	}
	errno := int32(ne.Uint32(b[offErr:]))
	if errno < 0 {
		return outcomeRecord{}, fmt.Errorf("%w: errno %d", ErrMalformed, errno)
	}
	o, err := outcomeOf(connectOutcome(b[offOutcome]), unix.Errno(errno))
	if err != nil {
		return outcomeRecord{}, err
	}
	return outcomeRecord{cookie: ne.Uint64(b[offCookie:]), ts: int64(ne.Uint64(b[offTs:])), outcome: o, errno: unix.Errno(errno)}, nil
}

// caller is what a record holds of its caller. The kernel sends a start's
// caller once, and TLS records without one: the collector keeps it by
// cookie and gives it to the connect's other events.
type caller struct {
	pid, tid, uid, gid uint32
	netns, loginUID    uint32
	cgroup, procStart  uint64
	comm               [16]byte
	tty                bool
}

func decodeCaller(b []byte) caller {
	ne := binary.NativeEndian
	c := caller{
		pid:       ne.Uint32(b[offTgid:]),
		tid:       ne.Uint32(b[offTid:]),
		uid:       ne.Uint32(b[offUID:]),
		gid:       ne.Uint32(b[offGID:]),
		netns:     ne.Uint32(b[offNetns:]),
		loginUID:  ne.Uint32(b[offLoginUID:]),
		cgroup:    ne.Uint64(b[offCgroup:]),
		procStart: ne.Uint64(b[offTaskStart:]),
		tty:       b[offTTY] != 0,
	}
	copy(c.comm[:], b[offComm:offComm+16])
	return c
}

func (c *caller) applyTo(e *Event) {
	e.PID, e.TID, e.UID, e.GID, e.NetNS = c.pid, c.tid, c.uid, c.gid, c.netns
	e.CgroupID, e.ProcStart, e.Comm = c.cgroup, c.procStart, c.comm
	e.TTY, e.LoginUID = c.tty, c.loginUID
}

// decodeHeader sets e to what the struct event at the start of every
// record holds of the caller, and its time and cookie. Fields the kernel
// left zero stay zero.
func decodeHeader(b []byte, bootOffset int64, e *Event) {
	ne := binary.NativeEndian
	*e = Event{
		Time:   int64(ne.Uint64(b[offTs:])) + bootOffset,
		Cookie: ne.Uint64(b[offCookie:]),
	}
	c := decodeCaller(b)
	c.applyTo(e)
}

// decodeAddrs reads a record's source and destination.
func decodeAddrs(b []byte) (src, dst netip.AddrPort, err error) {
	ne := binary.NativeEndian
	var s, d netip.Addr
	switch family := ne.Uint16(b[offFamily:]); family {
	case afInet:
		s = netip.AddrFrom4([4]byte(b[offSaddr : offSaddr+4]))
		d = netip.AddrFrom4([4]byte(b[offDaddr : offDaddr+4]))
	case afInet6:
		s = netip.AddrFrom16([16]byte(b[offSaddr : offSaddr+16])).Unmap()
		d = netip.AddrFrom16([16]byte(b[offDaddr : offDaddr+16])).Unmap()
	default:
		return src, dst, fmt.Errorf("%w: address family %d", ErrMalformed, family)
	}
	return netip.AddrPortFrom(s, ne.Uint16(b[offSport:])), netip.AddrPortFrom(d, ne.Uint16(b[offDport:])), nil
}

// outcomeOf names what the kernel saw. A socket closed with no error before
// it was established had no answer by the time its caller gave up (its own
// connect timeout): that is a timeout too, told apart by a zero Errno.
func outcomeOf(o connectOutcome, errno unix.Errno) (Outcome, error) {
	switch o {
	case connectOutcomeOUTCOME_ESTABLISHED:
		return OutcomeEstablished, nil
	case connectOutcomeOUTCOME_CLOSED, connectOutcomeOUTCOME_UNSENT:
		switch errno {
		case 0, unix.ETIMEDOUT:
			if errno == 0 && o == connectOutcomeOUTCOME_UNSENT {
				// Failed before its SYN, and the error was not kept.
				return OutcomeFailed, nil
			}
			return OutcomeTimeout, nil
		case unix.ECONNREFUSED:
			return OutcomeRefused, nil
		case unix.EHOSTUNREACH, unix.ENETUNREACH, unix.EHOSTDOWN, unix.ENETDOWN:
			return OutcomeUnreachable, nil
		case unix.ECONNRESET:
			return OutcomeReset, nil
		}
		return OutcomeFailed, nil
	}
	return 0, fmt.Errorf("%w: outcome %d", ErrMalformed, o)
}
