package exporter

import (
	"net/netip"
	"path"
	"strconv"
	"strings"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/collector/tlshello"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/scope"
)

// Record formats of the stream: the contract's events, or OCSF records.
const (
	FormatCallscope = "callscope"
	FormatOCSF      = "ocsf"
)

// OCSFVersion is the OCSF schema release the records follow.
const OCSFVersion = "1.8.0"

// RecordEncoder turns events into the stream's records, one a line.
// Encoder and OCSFEncoder are the two.
type RecordEncoder interface {
	// Append appends ev as one JSON object and a '\n', numbering it.
	Append(dst []byte, ev *scope.Event) []byte
	// Seq returns the last seq assigned (0 before any).
	Seq() uint64
}

// OCSF classes, activities and enum values written (schema 1.8.0).
const (
	ocsfNetworkActivity = 4001 // category Network Activity (4)
	ocsfEventLog        = 1008 // Event Log Activity, category System Activity (1)

	ocsfOpen    = 1
	ocsfReset   = 3
	ocsfFail    = 4
	ocsfRefuse  = 5
	ocsfTraffic = 6
	ocsfOther   = 99
)

// ocsfActivities are the members from class_uid to type_name of a network
// record, by activity: the same in every record of one.
var ocsfActivities = func() (m [ocsfOther + 1]string) {
	for id, name := range map[int]string{ocsfOpen: "Open", ocsfReset: "Reset", ocsfFail: "Fail", ocsfRefuse: "Refuse", ocsfTraffic: "Traffic", ocsfOther: "Other"} {
		m[id] = ocsfHead(ocsfNetworkActivity, "Network Activity", 4, "Network Activity", id, name)
	}
	return m
}()

// ocsfVerdictHead is the head of a verdict event's record: an activity
// Other, named.
var ocsfVerdictHead = ocsfHead(ocsfNetworkActivity, "Network Activity", 4, "Network Activity", ocsfOther, "Verdict")

var ocsfLossHead = ocsfHead(ocsfEventLog, "Event Log Activity", 1, "System Activity", ocsfOther, "Loss")

func ocsfHead(class int, className string, category int, categoryName string, activity int, activityName string) string {
	return `{"class_uid":` + strconv.Itoa(class) + `,"class_name":"` + className +
		`","category_uid":` + strconv.Itoa(category) + `,"category_name":"` + categoryName +
		`","activity_id":` + strconv.Itoa(activity) + `,"activity_name":"` + activityName +
		`","type_uid":` + strconv.Itoa(class*100+activity) + `,"type_name":"` + className + ": " + activityName + `"`
}

// Severities, by what a record reports.
const (
	ocsfInformational = `,"severity_id":1,"severity":"Informational"`
	ocsfLow           = `,"severity_id":2,"severity":"Low"`
	ocsfMedium        = `,"severity_id":3,"severity":"Medium"`
)

// ocsfVerdicts are the security control members of each verdict. The
// agent observes and never blocks: a violation is detected, not denied.
var ocsfVerdicts = [...]string{
	scope.Allowed:   `,"action_id":1,"action":"Allowed","disposition_id":1,"disposition":"Allowed","is_alert":false`,
	scope.Violation: `,"action_id":3,"action":"Observed","disposition_id":15,"disposition":"Detected","is_alert":true`,
	scope.Unscoped:  `,"action_id":3,"action":"Observed","disposition_id":17,"disposition":"Logged","is_alert":false`,
	scope.Pending:   `,"action_id":3,"action":"Observed","disposition_id":0,"disposition":"Unknown","is_alert":false`,
}

// OCSFEncoder turns events into OCSF records: connect, tls and verdict
// events into Network Activity (4001), loss events into Event Log
// Activity (1008). What OCSF has no attribute for goes under "unmapped",
// named as the contract's events name it. It numbers events as Encoder
// does. Not safe for concurrent use.
type OCSFEncoder struct {
	meta    []byte // from the metadata member up to the id's seq
	device  []byte // the device member, with the node
	seq     uint64
	scratch []byte
	tail    []byte // the caller's unmapped facts, for a caller /proc did not tell of
	// callers holds what was encoded of each process. The key keeps the
	// Process alive, so an address is never reused while it is here.
	callers map[*enrich.Process]*ocsfCaller
	// ciphers holds the names of the cipher suites seen: naming one
	// through crypto/tls allocates.
	ciphers map[uint16]string
}

// NewOCSFEncoder returns an OCSFEncoder for events of node, as NewEncoder;
// version is the agent's, told in metadata.product.
func NewOCSFEncoder(node, instance, version string) *OCSFEncoder {
	e := &OCSFEncoder{}
	e.meta = append(e.meta, `,"metadata":{"version":"`+OCSFVersion+`","product":{"name":"callscope","vendor_name":"callscope"`...)
	e.meta = appendOptional(e.meta, `,"version":`, version)
	e.meta = append(e.meta, `},"profiles":["host","security_control","container"],"uid":"`...)
	e.meta = appendEscaped(e.meta, instance)
	e.meta = append(e.meta, '-')
	// A device must have a name: without the node's, none is written.
	if node != "" {
		e.device = append(e.device, `,"device":{"hostname":`...)
		e.device = appendString(e.device, node)
		e.device = append(e.device, `,"type_id":0,"type":"Unknown"}`...)
	}
	return e
}

// Seq returns the last seq assigned (0 before any).
func (e *OCSFEncoder) Seq() uint64 { return e.seq }

// Append appends ev as one OCSF record followed by '\n' to dst, assigns
// the next seq, and returns the extended slice. A fact that is unknown is
// left out.
func (e *OCSFEncoder) Append(dst []byte, sev *scope.Event) []byte {
	ev := &sev.Event
	e.seq++
	e.scratch = e.scratch[:0]
	if ev.Kind == collector.KindLoss {
		return e.appendLoss(dst, ev)
	}
	activity := ocsfOther
	switch ev.Kind {
	case collector.KindTLS:
		activity = ocsfTraffic
	case collector.KindConnect:
		switch ev.Outcome {
		case collector.OutcomeEstablished:
			activity = ocsfOpen
		case collector.OutcomeRefused:
			activity = ocsfRefuse
		case collector.OutcomeReset:
			activity = ocsfReset
		case collector.OutcomeTimeout, collector.OutcomeUnreachable, collector.OutcomeFailed:
			activity = ocsfFail
		}
	}
	if ev.Kind == collector.KindVerdict {
		dst = append(dst, ocsfVerdictHead...)
	} else {
		dst = append(dst, ocsfActivities[activity]...)
	}
	j := &sev.Scope
	switch {
	case j.Verdict == scope.Violation:
		dst = append(dst, ocsfMedium...)
	case sev.Findings != 0:
		dst = append(dst, ocsfLow...)
	default:
		dst = append(dst, ocsfInformational...)
	}
	dst = e.appendHead(dst, ev)
	if ev.Kind == collector.KindConnect && ev.Outcome != collector.OutcomeUnknown {
		if ev.Outcome == collector.OutcomeEstablished {
			dst = append(dst, `,"status_id":1,"status":"Success"`...)
		} else {
			dst = append(dst, `,"status_id":2,"status":"Failure"`...)
		}
		dst = append(dst, `,"status_detail":"`...)
		dst = append(dst, ev.Outcome.String()...)
		dst = append(dst, '"')
	}
	if ev.Errno != 0 {
		dst = append(dst, `,"status_code":"`...)
		dst = appendErrno(dst, ev.Errno)
		dst = append(dst, '"')
	}
	if j.Verdict != 0 && int(j.Verdict) < len(ocsfVerdicts) {
		dst = append(dst, ocsfVerdicts[j.Verdict]...)
		if j.Scopes != "" {
			dst = append(dst, `,"policy":{"name":`...)
			dst = appendString(dst, j.Scopes)
			dst = append(dst, '}')
		}
		e.scratch = scope.AppendReason(e.scratch[:0], sev)
		if len(e.scratch) > 0 {
			dst = append(dst, `,"message":`...)
			dst = appendString(dst, bytesString(e.scratch))
		}
	}
	if src := ev.Src; src.Addr().IsValid() {
		dst = append(dst, `,"src_endpoint":`...)
		dst = appendOCSFEndpoint(dst, src)
		dst = append(dst, '}')
	}
	if ev.Dst.Addr().IsValid() || ev.DstName != "" {
		dst = append(dst, `,"dst_endpoint":`...)
		if ev.Dst.Addr().IsValid() {
			dst = appendOCSFEndpoint(dst, ev.Dst)
			if ev.DstName != "" {
				dst = append(dst, ',')
			}
		} else {
			dst = append(dst, '{')
		}
		if ev.DstName != "" {
			dst = append(dst, `"hostname":`...)
			dst = appendString(dst, ev.DstName)
		}
		if c := ev.Callee; c != nil && c.Service != "" {
			dst = append(dst, `,"svc_name":`...)
			dst = appendString(dst, c.Service)
		}
		dst = append(dst, '}')
	}
	dst = append(dst, `,"connection_info":{"protocol_name":"tcp","protocol_num":6,"direction_id":2,"direction":"Outbound"`...)
	if a := ev.Dst.Addr(); a.IsValid() {
		if a.Is4() || a.Is4In6() {
			dst = append(dst, `,"protocol_ver_id":4,"protocol_ver":"Internet Protocol version 4 (IPv4)"`...)
		} else {
			dst = append(dst, `,"protocol_ver_id":6,"protocol_ver":"Internet Protocol version 6 (IPv6)"`...)
		}
	}
	if ev.Cookie != 0 {
		dst = append(dst, `,"uid":"`...)
		dst = appendHex16(dst, ev.Cookie)
		dst = append(dst, '"')
	}
	dst = append(dst, '}')
	dst, caller := e.appendCaller(dst, ev)
	if ev.Kind == collector.KindTLS && ev.Hello != nil {
		dst = e.appendTLS(dst, ev)
	}
	dst = e.appendUnmapped(dst, sev, caller)
	return append(dst, '}', '\n')
}

// appendHead writes time, metadata and device.
func (e *OCSFEncoder) appendHead(dst []byte, ev *enrich.Event) []byte {
	dst = append(dst, `,"time":`...)
	dst = strconv.AppendInt(dst, ev.Time/1e6, 10)
	dst = append(dst, `,"timezone_offset":0`...)
	dst = append(dst, e.meta...)
	dst = strconv.AppendUint(dst, e.seq, 10)
	dst = append(dst, `","sequence":`...)
	dst = strconv.AppendUint(dst, e.seq, 10)
	dst = append(dst, '}')
	return append(dst, e.device...)
}

// appendLoss writes a loss as an Event Log Activity of the agent's own
// stream: activity Other, named Loss, status Failure, what was lost in
// unmapped.loss as the contract's loss events say it.
func (e *OCSFEncoder) appendLoss(dst []byte, ev *enrich.Event) []byte {
	dst = append(dst, ocsfLossHead...)
	dst = append(dst, ocsfMedium...)
	dst = e.appendHead(dst, ev)
	dst = append(dst, `,"status_id":2,"status":"Failure"`...)
	dst = appendOptional(dst, `,"status_detail":`, ev.LossReason)
	dst = append(dst, `,"message":"`...)
	dst = strconv.AppendUint(dst, ev.Lost, 10)
	dst = append(dst, ` events lost at `...)
	dst = appendEscaped(dst, ev.LossStage)
	dst = append(dst, ` (`...)
	dst = appendEscaped(dst, ev.LossReason)
	dst = append(dst, `)","log_provider":"callscope","actor":{"app_name":"callscope"}`...)
	dst = append(dst, `,"unmapped":{"kind":"loss","loss":{"stage":`...)
	dst = appendString(dst, ev.LossStage)
	dst = append(dst, `,"reason":`...)
	dst = appendString(dst, ev.LossReason)
	dst = append(dst, `,"count":`...)
	dst = strconv.AppendUint(dst, ev.Lost, 10)
	return append(dst, '}', '}', '}', '\n')
}

// appendOCSFEndpoint opens an endpoint with its ip and port. An IPv6
// zone is no part of an OCSF ip_t: it goes under unmapped.
func appendOCSFEndpoint(dst []byte, ap netip.AddrPort) []byte {
	dst = append(dst, `{"ip":"`...)
	dst = ap.Addr().WithZone("").AppendTo(dst)
	dst = append(dst, `","port":`...)
	return strconv.AppendUint(dst, uint64(ap.Port()), 10)
}

func appendErrno(dst []byte, errno unix.Errno) []byte {
	if name := unix.ErrnoName(errno); name != "" {
		return append(dst, name...)
	}
	return strconv.AppendUint(dst, uint64(errno), 10)
}

// appendCaller writes the actor member, and returns with it what
// unmapped holds of the caller. A process's events come in runs: both are
// kept from its last event and copied while the caller's facts stay the
// same.
func (e *OCSFEncoder) appendCaller(dst []byte, ev *enrich.Event) (_, tail []byte) {
	p := ev.Process
	if p == nil {
		e.tail = appendCallerTail(e.tail[:0], ev)
		return appendActor(dst, ev), e.tail
	}
	k := callerKey{tid: ev.TID, uid: ev.UID, gid: ev.GID, comm: ev.Comm, cgroupID: ev.CgroupID,
		cgroupPath: ev.CgroupPath, identity: ev.Identity, cgroup: ev.Cgroup, pod: ev.Pod}
	c, ok := e.callers[p]
	if !ok {
		if e.callers == nil || len(e.callers) >= maxProcesses {
			// As Encoder's processes: the callers still calling are
			// encoded again at once.
			e.callers = make(map[*enrich.Process]*ocsfCaller, maxProcesses)
		}
		c = &ocsfCaller{}
		e.callers[p] = c
	}
	if !ok || c.key != k {
		c.key = k
		c.actor = appendActor(c.actor[:0], ev)
		c.tail = appendCallerTail(c.tail[:0], ev)
	}
	return append(dst, c.actor...), c.tail
}

// ocsfCaller is what the encoder keeps of a process: the actor member and
// the caller's unmapped facts as last written, and the facts they hold.
type ocsfCaller struct {
	key         callerKey
	actor, tail []byte
}

type callerKey struct {
	tid, uid, gid        uint32
	comm                 [16]byte
	cgroupID             uint64
	cgroupPath, identity string
	cgroup               enrich.CgroupInfo
	pod                  *enrich.Pod
}

// appendActor writes the calling process, its user, parent and container.
func appendActor(dst []byte, ev *enrich.Event) []byte {
	dst = append(dst, `,"actor":{"process":{"pid":`...)
	dst = strconv.AppendUint(dst, uint64(ev.PID), 10)
	dst = append(dst, `,"tid":`...)
	dst = strconv.AppendUint(dst, uint64(ev.TID), 10)
	if comm := ev.CommString(); comm != "" {
		dst = append(dst, `,"name":`...)
		dst = appendString(dst, comm)
	}
	if p := ev.Process; p != nil {
		dst = appendProcFacts(dst, p)
		if p.PPID != 0 {
			dst = append(dst, `,"parent_process":{"pid":`...)
			dst = strconv.AppendUint(dst, uint64(p.PPID), 10)
			dst = append(dst, '}')
		}
	}
	dst = append(dst, `,"user":{"uid":"`...)
	dst = strconv.AppendUint(dst, uint64(ev.UID), 10)
	dst = append(dst, `"}`...)
	if c := &ev.Cgroup; c.ContainerID != "" {
		dst = append(dst, `,"container":{"uid":`...)
		dst = appendString(dst, c.ContainerID)
		dst = appendOptional(dst, `,"runtime":`, c.Runtime)
		if uid := podUID(ev); uid != "" {
			dst = append(dst, `,"pod_uuid":`...)
			dst = appendString(dst, uid)
			dst = append(dst, `,"orchestrator":"Kubernetes"`...)
		}
		dst = append(dst, '}')
	}
	return append(dst, '}', '}')
}

// appendCallerTail writes the caller's facts OCSF has no home for: gid,
// cgroup, pod and identity.
func appendCallerTail(dst []byte, ev *enrich.Event) []byte {
	dst = append(dst, `,"process":{"gid":`...)
	dst = strconv.AppendUint(dst, uint64(ev.GID), 10)
	dst = append(dst, '}')
	if ev.CgroupID != 0 || ev.CgroupPath != "" {
		dst = append(dst, `,"cgroup":{`...)
		first := len(dst)
		if ev.CgroupID != 0 {
			dst = append(dst, `,"id":`...)
			dst = strconv.AppendUint(dst, ev.CgroupID, 10)
		}
		dst = appendOptional(dst, `,"path":`, ev.CgroupPath)
		dst = append(dst[:first], dst[first+1:]...)
		dst = append(dst, '}')
	}
	dst = appendK8s(dst, ev)
	if ev.Identity != "" {
		dst = append(dst, `,"identity":`...)
		dst = appendString(dst, ev.Identity)
	}
	return dst
}

// appendProcFacts writes what /proc said of p: its executable and command
// line, the arguments joined by spaces.
func appendProcFacts(dst []byte, p *enrich.Process) []byte {
	if p.Exe != "" {
		dst = append(dst, `,"file":{"name":`...)
		dst = appendString(dst, path.Base(p.Exe))
		dst = append(dst, `,"path":`...)
		dst = appendString(dst, p.Exe)
		dst = append(dst, `,"type_id":1,"type":"Regular File"}`...)
	}
	if len(p.Cmdline) > 0 {
		dst = append(dst, `,"cmd_line":`...)
		dst = appendString(dst, strings.Join(p.Cmdline, " "))
	}
	return dst
}

func (e *OCSFEncoder) cipherName(id uint16) string {
	name, ok := e.ciphers[id]
	if !ok {
		if e.ciphers == nil || len(e.ciphers) >= 1024 { // bounded: a server can choose any id
			e.ciphers = map[uint16]string{}
		}
		name = tlshello.CipherSuiteName(id)
		e.ciphers[id] = name
	}
	return name
}

// bytesString is b as a string, for appending: it must not be kept.
func bytesString(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	return unsafe.String(&b[0], len(b))
}

func podUID(ev *enrich.Event) string {
	if ev.Cgroup.PodUID != "" {
		return ev.Cgroup.PodUID
	}
	if ev.Pod != nil {
		return ev.Pod.UID
	}
	return ""
}

// appendTLS writes the tls object and the JA4 fingerprint. Its version
// is the one the server chose when its hello was seen, else the highest
// the client offered; cipher is the server's choice.
func (e *OCSFEncoder) appendTLS(dst []byte, ev *enrich.Event) []byte {
	h, sh := ev.Hello, ev.ServerHello
	if sh != nil && sh.HelloRetry {
		sh = nil
	}
	version := h.MaxVersion()
	if sh != nil && sh.Version != 0 {
		version = sh.Version
	}
	if version != 0 {
		dst = append(dst, `,"tls":{"version":`...)
		dst = appendString(dst, tlshello.VersionName(version))
		dst = appendOptional(dst, `,"sni":`, h.SNI)
		if sh != nil {
			dst = append(dst, `,"cipher":`...)
			dst = appendString(dst, e.cipherName(sh.CipherSuite))
		}
		dst = append(dst, '}')
	}
	if h.JA4 != "" {
		dst = append(dst, `,"ja4_fingerprint_list":[{"type_id":1,"type":"JA4","value":`...)
		dst = appendString(dst, h.JA4)
		dst = append(dst, `}]`...)
	}
	return dst
}

// appendUnmapped writes what OCSF 1.8.0 has no attribute for, named as in
// the contract's events: kind, netns, IPv6 zones, the destination's name source, the
// hello's details, gid, cgroup, the pod, identity, the callee, the scope
// and the findings.
func (e *OCSFEncoder) appendUnmapped(dst []byte, sev *scope.Event, caller []byte) []byte {
	ev := &sev.Event
	dst = append(dst, `,"unmapped":{"kind":"`...)
	dst = append(dst, ev.Kind.String()...)
	dst = append(dst, '"')
	if ev.NetNS != 0 {
		dst = append(dst, `,"netns":`...)
		dst = strconv.AppendUint(dst, uint64(ev.NetNS), 10)
	}
	if zone := ev.Src.Addr().Zone(); zone != "" {
		dst = append(dst, `,"src":{"zone":`...)
		dst = appendString(dst, zone)
		dst = append(dst, '}')
	}
	source := ev.NameSource != "" && ev.DstName != ""
	if zone := ev.Dst.Addr().Zone(); source || zone != "" {
		dst = append(dst, `,"dst":{`...)
		first := len(dst)
		if source {
			dst = append(dst, `,"name_source":`...)
			dst = appendString(dst, ev.NameSource)
		}
		dst = appendOptional(dst, `,"zone":`, zone)
		dst = append(dst[:first], dst[first+1:]...)
		dst = append(dst, '}')
	}
	if ev.Kind == collector.KindTLS && ev.Hello != nil {
		h := ev.Hello
		dst = append(dst, `,"tls":{`...)
		first := len(dst)
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
		if h.Truncated {
			dst = append(dst, `,"truncated":true`...)
		}
		if sh := ev.ServerHello; sh != nil && sh.HelloRetry {
			dst = append(dst, `,"server":{"hello_retry":true}`...)
		}
		dst = append(dst[:first], dst[first+1:]...) // the first field's comma
		dst = append(dst, '}')
	}
	dst = append(dst, caller...)
	if c := ev.Callee; c != nil {
		dst = append(dst, `,"callee":{`...)
		first := len(dst)
		dst = appendOptional(dst, `,"namespace":`, c.Namespace)
		dst = appendOptional(dst, `,"service":`, c.Service)
		dst = appendOptional(dst, `,"pod":`, c.Pod)
		dst = appendOptional(dst, `,"service_account":`, c.ServiceAccount)
		dst = appendOptional(dst, `,"workload":`, c.Workload)
		dst = appendOptional(dst, `,"identity":`, c.Identity)
		if len(dst) > first {
			dst = append(dst[:first], dst[first+1:]...)
		}
		dst = append(dst, '}')
	}
	if j := &sev.Scope; j.Verdict != 0 {
		dst = append(dst, `,"scope":{"verdict":"`...)
		dst = append(dst, j.Verdict.String()...)
		dst = append(dst, '"')
		dst = appendOptional(dst, `,"policy":`, j.Scopes)
		dst = appendOptional(dst, `,"rule":`, j.Rule)
		if len(e.scratch) > 0 { // the reason, as appended for the message
			dst = append(dst, `,"reason":`...)
			dst = appendString(dst, bytesString(e.scratch))
		}
		dst = append(dst, '}')
	}
	if sev.Findings != 0 {
		dst = append(dst, `,"findings":[`...)
		sep := false
		for f := scope.Finding(0); f < scope.NumFindings; f++ {
			if !sev.Findings.Has(f) {
				continue
			}
			if sep {
				dst = append(dst, ',')
			}
			sep = true
			info := &scope.Catalogue[f]
			dst = append(dst, `{"id":"`...)
			dst = append(dst, info.ID...)
			dst = append(dst, '"')
			dst = appendOptional(dst, `,"owasp":`, info.OWASP)
			e.scratch = scope.AppendFindingReason(e.scratch[:0], sev, f)
			dst = appendOptional(dst, `,"reason":`, bytesString(e.scratch))
			dst = append(dst, '}')
		}
		dst = append(dst, ']')
	}
	return append(dst, '}')
}
