package enrich

import "strings"

// CgroupInfo is what a cgroup path says about the processes in it.
type CgroupInfo struct {
	ContainerID string // 64 lowercase hex digits
	// Runtime is containerd, cri-o, docker or podman; "" when the path
	// does not say (kubelet's cgroupfs driver names only the id).
	Runtime string
	PodUID  string // the Kubernetes pod UID, with dashes
	// Unit is the systemd service the processes run in, outside any
	// container or pod: "nginx.service".
	Unit string
	// Session marks a login session scope (session-N.scope): a person, not
	// a workload, and never a container.
	Session bool
}

// Container runtimes as events name them.
const (
	RuntimeContainerd = "containerd"
	RuntimeCRIO       = "cri-o"
	RuntimeDocker     = "docker"
	RuntimePodman     = "podman"
)

// containerPrefixes name the runtime of a systemd scope (or a cgroupfs
// directory) "<prefix><64 hex>[.scope]". Longer prefixes come first so that
// crio-conmon- is not read as crio- with a bad id.
var containerPrefixes = []struct{ prefix, runtime string }{
	{"cri-containerd-", RuntimeContainerd},
	{"crio-conmon-", RuntimeCRIO}, // CRI-O's monitor of that container
	{"crio-", RuntimeCRIO},
	{"docker-", RuntimeDocker},
	{"libpod-conmon-", RuntimePodman}, // podman's monitor of that container
	{"libpod-", RuntimePodman},
}

// ParseCgroupPath reads a cgroup path (v2, or a v1 hierarchy's) such as
//
//	/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid_with_underscores>.slice/cri-containerd-<id>.scope
//	/kubepods/burstable/pod<uid>/<id>
//	/system.slice/docker-<id>.scope    /docker/<id>
//	/machine.slice/libpod-<id>.scope   /system.slice/nginx.service
//	/user.slice/user-1000.slice/session-3.scope
//
// The deepest container wins (a container inside another's cgroup), and a
// unit counts only below every container and pod, so containerd.service
// hosting a pod is not the pod's unit. It never allocates except for the
// pod UID of kubelet's systemd driver, whose dashes it restores.
func ParseCgroupPath(path string) CgroupInfo {
	var info CgroupInfo
	parent := ""
	for path != "" {
		var seg string
		seg, path, _ = strings.Cut(path, "/")
		switch {
		case seg == "":
			continue
		case podSegment(seg, parent, &info):
			info.Unit = ""
		case containerSegment(seg, parent, &info):
			info.Unit = ""
		case strings.HasSuffix(seg, ".service") && len(seg) > len(".service"):
			info.Unit = seg
		case isSession(seg):
			info.Session = true
		}
		parent = seg
	}
	if info.Session {
		info.ContainerID, info.Runtime = "", ""
	}
	return info
}

// podSegment recognises kubelet's pod cgroups: kubepods-<qos>-pod<uid>.slice
// (systemd driver, dashes of the UID turned into underscores; a prefix
// such as kubelet-kubepods- under kind is allowed) and pod<uid> (cgroupfs).
func podSegment(seg, parent string, info *CgroupInfo) bool {
	if s, ok := strings.CutSuffix(seg, ".slice"); ok {
		i := strings.LastIndex(s, "-pod")
		if i < 0 || !strings.Contains(s[:i+1], "kubepods") {
			return false
		}
		uid := s[i+len("-pod"):]
		if !isUID(uid, '_') {
			return false
		}
		info.PodUID = strings.ReplaceAll(uid, "_", "-")
		return true
	}
	uid, ok := strings.CutPrefix(seg, "pod")
	if !ok || !isUID(uid, '-') {
		return false
	}
	switch parent {
	case "kubepods", "burstable", "besteffort", "guaranteed":
		info.PodUID = uid
		return true
	}
	return false
}

func containerSegment(seg, parent string, info *CgroupInfo) bool {
	// "<pod slice>:<runtime prefix>:<id>": a systemd-style cgroupsPath laid
	// out literally by a runtime using cgroupfs (seen in kind nodes).
	if slice, rest, ok := strings.Cut(seg, ":"); ok {
		prefix, id, _ := strings.Cut(rest, ":")
		podSegment(slice, parent, info)
		return containerSegment(prefix+"-"+id, parent, info)
	}
	s := strings.TrimSuffix(seg, ".scope")
	for _, p := range containerPrefixes {
		if id, ok := strings.CutPrefix(s, p.prefix); ok && isContainerID(id) {
			info.ContainerID, info.Runtime = id, p.runtime
			return true
		}
	}
	// cgroupfs layouts name the bare id: under a pod (the runtime is not
	// in the path) or under docker's own parent.
	if !isContainerID(seg) {
		return false
	}
	switch {
	case parent == "docker":
		info.ContainerID, info.Runtime = seg, RuntimeDocker
		return true
	case info.PodUID != "":
		info.ContainerID, info.Runtime = seg, ""
		return true
	}
	return false
}

// isSession reports a login session scope, session-<n>.scope.
func isSession(seg string) bool {
	n, ok := strings.CutPrefix(seg, "session-")
	if !ok {
		return false
	}
	n, ok = strings.CutSuffix(n, ".scope")
	if !ok || n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		c := n[i]
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') { // c1, c2 for greeters
			return false
		}
	}
	return true
}

func isContainerID(s string) bool {
	if len(s) != 64 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !isHex(s[i]) {
			return false
		}
	}
	return true
}

// isUID checks the 8-4-4-4-12 hex shape of a UID with the given separator.
func isUID(s string, sep byte) bool {
	if len(s) != 36 {
		return false
	}
	for i := 0; i < len(s); i++ {
		switch i {
		case 8, 13, 18, 23:
			if s[i] != sep {
				return false
			}
		default:
			if !isHex(s[i]) {
				return false
			}
		}
	}
	return true
}

func isHex(c byte) bool { return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' }
