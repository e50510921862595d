package enrich

import "github.com/callscope/callscope/collector"

// Process is what /proc said about a process while it lived. Once cached it
// is shared between events and never changed.
type Process struct {
	// Exe is /proc/<pid>/exe resolved, or, for a process gone before /proc
	// could be read, the path execve was given (not resolved); "" when
	// neither is known.
	Exe string
	// Cmdline is nil when unreadable or empty (kernel threads); it may be
	// cut when it came from execve's record.
	Cmdline []string
	PPID    uint32
}

// Event is a kernel event with what is known of its caller. Fields that
// could not be learnt are left zero, never guessed.
type Event struct {
	collector.Event
	// Process is nil when the process was gone (or its PID reused) before
	// /proc could be read.
	Process *Process
	// CgroupPath is relative to the cgroup2 root, starting with "/"; "" when
	// the cgroup was gone before it could be resolved.
	CgroupPath string
	// Cgroup is what the path says: container, pod UID, systemd unit.
	Cgroup CgroupInfo
	// Pod is the Kubernetes pod, nil when Kubernetes enrichment is off or
	// the pod was not known in time.
	Pod *Pod
	// Identity names the caller per the contract; "" when unknown.
	Identity string
	// DstName is a name of the destination: the SNI on a tls event, else a
	// name the caller's network namespace resolved to the address. "" when
	// none is known.
	DstName string
	// NameSource says where DstName came from: NameSourceDNS or NameSourceSNI.
	NameSource string
	// Callee names the destination inside the cluster: its Service and
	// pod. nil when Kubernetes is off or the address is not (yet) known
	// as a Service's or a pod's.
	Callee *Callee
}

// Callee is what the cluster says of a destination address. It is shared
// between events and never changed once published.
type Callee struct {
	Namespace string
	// Service is the Service whose cluster IP or endpoint the address is;
	// "" for a pod no Service's endpoints name.
	Service string
	// Pod, ServiceAccount and Workload are of the pod that has the
	// address; "" for a cluster IP, which is no pod's.
	Pod, ServiceAccount, Workload string
	// Identity is the pod's SPIFFE ID (spiffe://<trust domain>/ns/<ns>/sa/<sa>);
	// "" when no pod is known.
	Identity string
}

// Where an event's destination name came from.
const (
	NameSourceDNS = "dns"
	NameSourceSNI = "sni"
)
