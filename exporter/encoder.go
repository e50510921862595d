// Package exporter writes events to their sinks in the contract's JSON
// schema (JSON lines on stdout) and exposes the agent's Prometheus metrics.
package exporter

import (
	"net/netip"
	"strconv"
	"time"
	"unicode/utf8"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/collector/tlshello"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/scope"
)

// Schema is the value of every event's "schema" key.
const Schema = "callscope/v1"

// timeLayout is RFC 3339 with all nine fraction digits, so that the times
// of a stream sort as plain text too.
const timeLayout = "2006-01-02T15:04:05.000000000Z07:00"

// Encoder turns events into the contract's JSON lines. It numbers them:
// seq rises by one per event of this agent instance. Not safe for concurrent use.
type Encoder struct {
	// The line's start up to the id's seq, and the node member: the same
	// in every line, so escaped once.
	head   []byte
	node   []byte
	seq    uint64
	reason []byte // scratch for a verdict's reason, escaped on its way out
	// The scope member up to its reason, as written last, and what it says.
	scopeHead struct {
		enc                   []byte
		verdict               scope.Verdict
		scopes, rule, version string
	}
	// The formatted second of the last event: events come in bursts of
	// the same second, and formatting a date costs more than the rest of
	// the timestamp.
	sec    int64
	secFmt []byte
	// The last source address and destination written: a caller's calls
	// leave from one address, mostly for a few, and formatting an address
	// costs more than comparing it. A source's port changes with each
	// connect, so only its address is kept.
	src struct {
		addr netip.Addr
		enc  []byte // {"ip":"…"
	}
	dst struct {
		addr netip.AddrPort
		enc  []byte // {"ip":"…","port":N}
	}
	// processes holds what was encoded of each process. The key keeps the
	// Process alive, so an address is never reused while it is here.
	processes map[*enrich.Process]*encodedProcess
}

// appendTime appends t (Unix nanoseconds) in timeLayout.
func (e *Encoder) appendTime(dst []byte, t int64) []byte {
	if t < 0 {
		return time.Unix(0, t).UTC().AppendFormat(dst, timeLayout)
	}
	sec, nsec := t/1e9, t%1e9
	if sec != e.sec || e.secFmt == nil {
		e.sec = sec
		e.secFmt = time.Unix(sec, 0).UTC().AppendFormat(e.secFmt[:0], "2006-01-02T15:04:05.")
	}
	dst = append(dst, e.secFmt...)
	var frac [9]byte
	for i := len(frac) - 1; i >= 0; i-- {
		frac[i] = byte('0' + nsec%10)
		nsec /= 10
	}
	dst = append(dst, frac[:]...)
	return append(dst, 'Z')
}

// NewEncoder returns an Encoder for events of node. instance is an id of
// this agent run; event ids are "<instance>-<seq>", so they stay unique
// across restarts that start seq again from 1.
func NewEncoder(node, instance string) *Encoder {
	e := &Encoder{}
	e.head = append(e.head, `{"schema":"`+Schema+`","id":"`...)
	e.head = appendEscaped(e.head, instance)
	e.head = append(e.head, '-')
	if node != "" {
		e.node = append(e.node, `,"node":`...)
		e.node = appendString(e.node, node)
	}
	return e
}

// Seq returns the last seq assigned (0 before any).
func (e *Encoder) Seq() uint64 { return e.seq }

// Append appends ev, with its verdict, as one JSON object followed by '\n'
// to dst, assigns the next seq, and returns the extended slice. It does not allocate when dst has room for
// the line.
//
// A fact that is unknown (zero) is left out rather than written as a zero
// value a consumer could mistake for a real one.
func (e *Encoder) Append(dst []byte, sev *scope.Event) []byte {
	ev := &sev.Event
	e.seq++
	dst = append(dst, e.head...)
	dst = strconv.AppendUint(dst, e.seq, 10)
	dst = append(dst, `","seq":`...)
	dst = strconv.AppendUint(dst, e.seq, 10)
	dst = append(dst, `,"time":"`...)
	dst = e.appendTime(dst, ev.Time)
	dst = append(dst, '"')
	dst = append(dst, e.node...)
	dst = append(dst, `,"kind":"`...)
	dst = append(dst, ev.Kind.String()...)
	dst = append(dst, '"')

	switch ev.Kind {
	case collector.KindConnect, collector.KindTLS, collector.KindVerdict:
		dst = e.appendCall(dst, ev)
		if sev.Scope.Verdict != 0 {
			dst = e.appendScope(dst, sev)
		}
		if sev.Findings != 0 {
			dst = e.appendFindings(dst, sev)
		}
	case collector.KindLoss:
		dst = append(dst, `,"loss":{"stage":`...)
		dst = appendString(dst, ev.LossStage)
		dst = append(dst, `,"reason":`...)
		dst = appendString(dst, ev.LossReason)
		dst = append(dst, `,"count":`...)
		dst = strconv.AppendUint(dst, ev.Lost, 10)
		dst = append(dst, '}')
	}
	return append(dst, '}', '\n')
}

// appendScope writes the verdict; policy names the scopes that bind the
// caller, rule the one that allowed the call, and staged, when there is
// one, the outcome of the staged scopes beside the enforced verdict.
func (e *Encoder) appendScope(dst []byte, ev *scope.Event) []byte {
	j := &ev.Scope
	// Verdicts come in runs of the same scope and rule: their members are
	// escaped once per run.
	if h := &e.scopeHead; h.enc == nil || h.verdict != j.Verdict || h.scopes != j.Scopes || h.rule != j.Rule || h.version != j.PolicyVersion {
		h.verdict, h.scopes, h.rule, h.version = j.Verdict, j.Scopes, j.Rule, j.PolicyVersion
		h.enc = append(h.enc[:0], `,"scope":{"verdict":"`...)
		h.enc = append(h.enc, j.Verdict.String()...)
		h.enc = append(h.enc, '"')
		h.enc = appendOptional(h.enc, `,"policy":`, j.Scopes)
		h.enc = appendOptional(h.enc, `,"rule":`, j.Rule)
		h.enc = appendOptional(h.enc, `,"policy_version":`, j.PolicyVersion)
	}
	dst = append(dst, e.scopeHead.enc...)
	e.reason = scope.AppendReason(e.reason[:0], ev)
	if len(e.reason) > 0 {
		dst = append(dst, `,"reason":`...)
		dst = appendString(dst, unsafe.String(&e.reason[0], len(e.reason)))
	}
	if st := &j.Staged; st.Verdict != 0 {
		dst = e.appendStaged(dst, ev)
	}
	return append(dst, '}')
}

// appendStaged writes what the staged scopes say of a call beside the
// verdict of the enforced ones: the staged member of scope, with the same
// keys as scope itself.
func (e *Encoder) appendStaged(dst []byte, ev *scope.Event) []byte {
	st := &ev.Scope.Staged
	dst = append(dst, `,"staged":{"verdict":"`...)
	dst = append(dst, st.Verdict.String()...)
	dst = append(dst, '"')
	dst = appendOptional(dst, `,"policy":`, st.Scopes)
	dst = appendOptional(dst, `,"rule":`, st.Rule)
	e.reason = scope.AppendStagedReason(e.reason[:0], ev)
	if len(e.reason) > 0 {
		dst = append(dst, `,"reason":`...)
		dst = appendString(dst, unsafe.String(&e.reason[0], len(e.reason)))
	}
	return append(dst, '}')
}

// appendFindings writes the findings, in the catalogue's order.
func (e *Encoder) appendFindings(dst []byte, ev *scope.Event) []byte {
	dst = append(dst, `,"findings":[`...)
	first := true
	for f := range scope.NumFindings {
		if !ev.Findings.Has(f) {
			continue
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		info := &scope.Catalogue[f]
		dst = append(dst, `{"id":"`...)
		dst = append(dst, info.ID...)
		dst = append(dst, '"')
		if info.OWASP != "" {
			dst = append(dst, `,"owasp":"`...)
			dst = append(dst, info.OWASP...)
			dst = append(dst, '"')
		}
		e.reason = scope.AppendFindingReason(e.reason[:0], ev, f)
		if len(e.reason) > 0 {
			dst = append(dst, `,"reason":`...)
			dst = appendString(dst, unsafe.String(&e.reason[0], len(e.reason)))
		}
		dst = append(dst, '}')
	}
	return append(dst, ']')
}

// appendCall writes what connect, tls and verdict events share: the
// connection, its caller and, by kind, its outcome or its TLS hello.
func (e *Encoder) appendCall(dst []byte, ev *enrich.Event) []byte {
	// Socket cookies start at 1: 0 means the kernel gave none.
	if ev.Cookie != 0 {
		dst = append(dst, `,"conn":"`...)
		dst = appendHex16(dst, ev.Cookie)
		dst = append(dst, '"')
	}
	dst = append(dst, `,"proto":"tcp"`...)
	if dstIP := ev.Dst.Addr(); dstIP.IsValid() {
		if dstIP.Is4() {
			dst = append(dst, `,"family":"ipv4"`...)
		} else {
			dst = append(dst, `,"family":"ipv6"`...)
		}
	}
	if ev.NetNS != 0 {
		dst = append(dst, `,"netns":`...)
		dst = strconv.AppendUint(dst, uint64(ev.NetNS), 10)
	}
	// A connect that failed before a SYN was sent never got a source address.
	if src := ev.Src.Addr(); src.IsValid() {
		if e.src.enc == nil || src != e.src.addr {
			e.src.addr, e.src.enc = src, appendIP(e.src.enc[:0], src)
		}
		dst = append(dst, `,"src":`...)
		dst = append(dst, e.src.enc...)
		dst = appendPort(dst, ev.Src.Port())
	}
	if ev.Dst.Addr().IsValid() {
		if e.dst.enc == nil || ev.Dst != e.dst.addr {
			e.dst.addr, e.dst.enc = ev.Dst, appendPort(appendIP(e.dst.enc[:0], ev.Dst.Addr()), ev.Dst.Port())
		}
		dst = append(dst, `,"dst":`...)
		dst = append(dst, e.dst.enc...)
		if ev.DstName != "" {
			// Reopen the object: the name belongs with the address.
			dst = dst[:len(dst)-1]
			dst = append(dst, `,"name":`...)
			dst = appendString(dst, ev.DstName)
			dst = appendOptional(dst, `,"name_source":`, ev.NameSource)
			dst = append(dst, '}')
		}
		if ev.Callee != nil {
			dst = appendCallee(dst[:len(dst)-1], ev.Callee)
		}
	}
	if ev.Kind == collector.KindTLS && ev.Hello != nil {
		dst = appendTLS(dst, ev)
	}
	if ev.Outcome != collector.OutcomeUnknown && ev.Kind == collector.KindConnect {
		dst = append(dst, `,"outcome":"`...)
		dst = append(dst, ev.Outcome.String()...)
		dst = append(dst, '"')
	}
	if ev.Errno != 0 {
		dst = append(dst, `,"error":"`...)
		if name := unix.ErrnoName(ev.Errno); name != "" {
			dst = append(dst, name...)
		} else {
			// An errno this build has no name for is still a fact worth keeping.
			dst = strconv.AppendUint(dst, uint64(ev.Errno), 10)
		}
		dst = append(dst, '"')
	}
	dst = e.appendProcess(dst, ev)
	if ev.CgroupID != 0 || ev.CgroupPath != "" {
		dst = append(dst, `,"cgroup":{`...)
		sep := ""
		if ev.CgroupID != 0 {
			dst = append(dst, `"id":`...)
			dst = strconv.AppendUint(dst, ev.CgroupID, 10)
			sep = ","
		}
		if ev.CgroupPath != "" {
			dst = append(dst, sep...)
			dst = append(dst, `"path":`...)
			dst = appendString(dst, ev.CgroupPath)
		}
		dst = append(dst, '}')
	}
	if c := &ev.Cgroup; c.ContainerID != "" {
		dst = append(dst, `,"container":{"id":`...)
		dst = appendString(dst, c.ContainerID)
		dst = appendOptional(dst, `,"runtime":`, c.Runtime)
		dst = append(dst, '}')
	}
	dst = appendK8s(dst, ev)
	if ev.Identity != "" {
		dst = append(dst, `,"identity":`...)
		dst = appendString(dst, ev.Identity)
	}
	return dst
}

// appendTLS writes the hello. Versions are named as the contract names
// them ("1.3"); cipher suites are counted, not listed, as JA4 already
// fingerprints them.
func appendTLS(dst []byte, ev *enrich.Event) []byte {
	h := ev.Hello
	dst = append(dst, `,"tls":{`...)
	first := len(dst)
	dst = appendOptional(dst, `,"sni":`, h.SNI)
	dst = appendStrings(dst, `,"alpn":`, h.ALPN)
	if len(h.Versions) > 0 {
		dst = append(dst, `,"versions":[`...)
		for i, v := range h.Versions {
			if i > 0 {
				dst = append(dst, ',')
			}
			dst = appendString(dst, tlshello.VersionName(v))
		}
		dst = append(dst, ']')
	}
	if h.LegacyVersion != 0 {
		dst = append(dst, `,"legacy_version":`...)
		dst = appendString(dst, tlshello.VersionName(h.LegacyVersion))
	}
	if h.CipherSuites > 0 {
		dst = append(dst, `,"cipher_suites":`...)
		dst = strconv.AppendInt(dst, int64(h.CipherSuites), 10)
	}
	dst = append(dst, `,"ech":`...)
	dst = strconv.AppendBool(dst, h.ECH)
	dst = append(dst, `,"post_quantum":`...)
	dst = strconv.AppendBool(dst, h.PostQuantum)
	dst = appendOptional(dst, `,"ja4":`, h.JA4)
	if h.Truncated {
		dst = append(dst, `,"truncated":true`...)
	}
	if sh := ev.ServerHello; sh != nil {
		dst = append(dst, `,"server":{"version":`...)
		dst = appendString(dst, tlshello.VersionName(sh.Version))
		dst = append(dst, `,"cipher":`...)
		dst = appendString(dst, tlshello.CipherSuiteName(sh.CipherSuite))
		if sh.HelloRetry {
			dst = append(dst, `,"hello_retry":true`...)
		}
		dst = append(dst, '}')
	}
	if len(dst) > first {
		dst = append(dst[:first], dst[first+1:]...) // the first field's comma
	}
	return append(dst, '}')
}

// appendK8s writes the pod: its UID from the cgroup path even when the
// Kubernetes API is not consulted or has not heard of the pod yet.
func appendK8s(dst []byte, ev *enrich.Event) []byte {
	uid := ev.Cgroup.PodUID
	if ev.Pod == nil && uid == "" {
		return dst
	}
	dst = append(dst, `,"k8s":{`...)
	first := len(dst)
	if p := ev.Pod; p != nil {
		dst = appendOptional(dst, `,"namespace":`, p.Namespace)
		dst = appendOptional(dst, `,"pod":`, p.Name)
		if uid == "" {
			uid = p.UID
		}
	}
	dst = appendOptional(dst, `,"pod_uid":`, uid)
	if p := ev.Pod; p != nil {
		dst = appendOptional(dst, `,"service_account":`, p.ServiceAccount)
		dst = appendOptional(dst, `,"workload":`, p.Workload)
	}
	if len(dst) > first {
		dst = append(dst[:first], dst[first+1:]...) // the first field's comma
	}
	return append(dst, '}')
}

// appendCallee writes into the open dst object what the cluster says of
// the destination, and closes the object.
func appendCallee(dst []byte, c *enrich.Callee) []byte {
	if c.Namespace != "" || c.Service != "" || c.Pod != "" {
		dst = append(dst, `,"k8s":{`...)
		first := len(dst)
		dst = appendOptional(dst, `,"namespace":`, c.Namespace)
		dst = appendOptional(dst, `,"service":`, c.Service)
		dst = appendOptional(dst, `,"pod":`, c.Pod)
		dst = appendOptional(dst, `,"service_account":`, c.ServiceAccount)
		dst = appendOptional(dst, `,"workload":`, c.Workload)
		dst = append(dst[:first], dst[first+1:]...) // the first field's comma
		dst = append(dst, '}')
	}
	dst = appendOptional(dst, `,"identity":`, c.Identity)
	return append(dst, '}')
}

// appendStrings writes key (with its leading comma) and vs as an array,
// unless vs is empty.
func appendStrings(dst []byte, key string, vs []string) []byte {
	if len(vs) == 0 {
		return dst
	}
	dst = append(dst, key...)
	dst = append(dst, '[')
	for i, v := range vs {
		if i > 0 {
			dst = append(dst, ',')
		}
		dst = appendString(dst, v)
	}
	return append(dst, ']')
}

// appendOptional writes key (with its leading comma) and v, unless v is empty.
func appendOptional(dst []byte, key, v string) []byte {
	if v == "" {
		return dst
	}
	dst = append(dst, key...)
	return appendString(dst, v)
}

// appendProcess writes the caller. pid, tid, uid and gid come from the
// kernel with every event, and 0 is a real uid (root), so they are always
// written; what /proc told is written only while it was readable.
//
// A process's events come in runs, so the member written for its last
// event is kept and copied whole while the thread's facts (tid, comm, uid,
// gid) stay the same. For another thread, as in a pool whose threads have
// names of their own, only /proc's exe and cmdline are copied from it:
// they never change once cached, and escaping a command line is most of
// the cost of an event.
func (e *Encoder) appendProcess(dst []byte, ev *enrich.Event) []byte {
	p := ev.Process
	if p == nil {
		return appendProcessRest(appendProcessHead(dst, ev), ev)
	}
	c := e.processCache(p)
	if c.member != nil && c.tid == ev.TID && c.comm == ev.Comm && c.uid == ev.UID && c.gid == ev.GID &&
		c.tty == ev.TTY && c.loginUID == ev.LoginUID {
		return append(dst, c.member...)
	}
	start := len(dst)
	dst = appendProcessHead(dst, ev)
	factsStart := len(dst) - start
	if c.member != nil {
		dst = append(dst, c.member[c.factsStart:c.factsEnd]...)
	} else {
		if p.Exe != "" {
			dst = append(dst, `,"exe":`...)
			dst = appendString(dst, p.Exe)
		}
		dst = appendStrings(dst, `,"cmdline":`, p.Cmdline)
	}
	factsEnd := len(dst) - start
	dst = appendProcessRest(dst, ev)
	c.member = append(c.member[:0], dst[start:]...)
	c.factsStart, c.factsEnd = factsStart, factsEnd
	c.tid, c.comm, c.uid, c.gid = ev.TID, ev.Comm, ev.UID, ev.GID
	c.tty, c.loginUID = ev.TTY, ev.LoginUID
	return dst
}

// appendProcessHead opens the process member and writes the thread's
// pid, tid and comm.
func appendProcessHead(dst []byte, ev *enrich.Event) []byte {
	dst = append(dst, `,"process":{"pid":`...)
	dst = strconv.AppendUint(dst, uint64(ev.PID), 10)
	dst = append(dst, `,"tid":`...)
	dst = strconv.AppendUint(dst, uint64(ev.TID), 10)
	// The conversion does not allocate: comm is short and appendString
	// does not keep it.
	if comm := ev.CommString(); comm != "" {
		dst = append(dst, `,"comm":`...)
		dst = appendString(dst, comm)
	}
	return dst
}

// appendProcessRest writes what follows /proc's facts, and closes the member.
func appendProcessRest(dst []byte, ev *enrich.Event) []byte {
	dst = append(dst, `,"uid":`...)
	dst = strconv.AppendUint(dst, uint64(ev.UID), 10)
	dst = append(dst, `,"gid":`...)
	dst = strconv.AppendUint(dst, uint64(ev.GID), 10)
	if p := ev.Process; p != nil && p.PPID != 0 {
		dst = append(dst, `,"ppid":`...)
		dst = strconv.AppendUint(dst, uint64(p.PPID), 10)
	}
	// A caller the kernel did not name (pid 0, as a connect made in
	// softirq) has no session to tell of.
	if ev.PID != 0 {
		if ev.TTY {
			dst = append(dst, `,"tty":true`...)
		}
		if ev.LoginUID != collector.LoginUIDUnset {
			dst = append(dst, `,"login_uid":`...)
			dst = strconv.AppendUint(dst, uint64(ev.LoginUID), 10)
		}
	}
	return append(dst, '}')
}

// maxProcesses bounds the processes whose encoded members are kept.
const maxProcesses = 4096

// encodedProcess is what the encoder keeps of a process: its process
// member as last written, where /proc's exe and cmdline lie in it, and the
// thread's facts it holds. A *enrich.Process is of one pid, so the pid
// needs no check.
type encodedProcess struct {
	member               []byte
	factsStart, factsEnd int
	tid, uid, gid        uint32
	comm                 [16]byte
	tty                  bool
	loginUID             uint32
}

// processCache returns what is kept for p.
func (e *Encoder) processCache(p *enrich.Process) *encodedProcess {
	if c, ok := e.processes[p]; ok {
		return c
	}
	if e.processes == nil || len(e.processes) >= maxProcesses {
		// Dropping them all is simpler than an LRU and as good: the
		// processes that are still calling are encoded again at once.
		e.processes = make(map[*enrich.Process]*encodedProcess, maxProcesses)
	}
	c := &encodedProcess{}
	e.processes[p] = c
	return c
}

// appendIP opens an address object: {"ip":"…"; appendPort closes it.
func appendIP(dst []byte, ip netip.Addr) []byte {
	dst = append(dst, `{"ip":"`...)
	// A zone is free text; write it escaped so it cannot break the line.
	dst = ip.WithZone("").AppendTo(dst)
	if zone := ip.Zone(); zone != "" {
		dst = append(dst, '%')
		dst = appendEscaped(dst, zone)
	}
	return append(dst, '"')
}

func appendPort(dst []byte, port uint16) []byte {
	dst = append(dst, `,"port":`...)
	dst = strconv.AppendUint(dst, uint64(port), 10)
	return append(dst, '}')
}

const hexDigits = "0123456789abcdef"

func appendHex16(dst []byte, v uint64) []byte {
	for shift := 60; shift >= 0; shift -= 4 {
		dst = append(dst, hexDigits[v>>uint(shift)&0xf])
	}
	return dst
}

func appendString(dst []byte, s string) []byte {
	dst = append(dst, '"')
	dst = appendEscaped(dst, s)
	return append(dst, '"')
}

// jsonPlain marks the bytes that stand for themselves in a JSON string:
// printable ASCII but '"' and '\\'.
var jsonPlain = func() (t [256]bool) {
	for b := 0x20; b < utf8.RuneSelf; b++ {
		t[b] = b != '"' && b != '\\'
	}
	return t
}()

// load8 reads s[i:i+8] as a little-endian word; the compiler makes one
// load of it.
func load8(s string, i int) uint64 {
	_ = s[i+7]
	return uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
		uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
}

// plain8 reports whether all eight bytes of x stand for themselves in a JSON
// string (jsonPlain): none below 0x20, none of '"' or '\\', none from 0x80.
// The first term is the word-wide "some byte is below 0x20" test,
// (x - 0x20…) &^ x, the next two the "some byte is zero" test of x with
// '"' and '\\' xored out, the last the bytes from 0x80; their high bits
// are exact as a whole though not byte by byte.
func plain8(x uint64) bool {
	const lo, hi = 0x0101010101010101, 0x8080808080808080
	quote, backslash := x^(lo*'"'), x^(lo*'\\')
	return ((x-lo*0x20)&^x|(quote-lo)&^quote|(backslash-lo)&^backslash|x)&hi == 0
}

// appendEscaped appends s escaped for a JSON string as encoding/json does
// it, so that any bytes at all (comm, argv and paths are whatever the
// caller made them) come out as valid JSON that decodes to what
// encoding/json would give. The HTML escapes of <, > and & are left out:
// nothing reading these lines renders them as HTML.
func appendEscaped(dst []byte, s string) []byte {
	start := 0
	for i := 0; i < len(s); {
		// Most strings are plain ASCII: skip runs of it eight bytes at a
		// time, then a table load a byte.
		for i+8 <= len(s) && plain8(load8(s, i)) {
			i += 8
		}
		for i < len(s) && jsonPlain[s[i]] {
			i++
		}
		if i == len(s) {
			break
		}
		b := s[i]
		if b < utf8.RuneSelf {
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case c == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, `\ufffd`...)
		case c == '\u2028' || c == '\u2029':
			// Valid JSON, but line terminators to JavaScript.
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', '2', '0', '2', hexDigits[c&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	return append(dst, s[start:]...)
}
