package collector

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// ErrUnsupported wraps every reason this node cannot run the collector, so
// that the agent can say plainly what is missing.
var ErrUnsupported = errors.New("this node cannot run callscope")

const btfPath = "/sys/kernel/btf/vmlinux"

// Capabilities the collector needs, by number (linux/capability.h).
var neededCaps = []struct {
	bit  uint
	name string
	why  string
}{
	{39, "CAP_BPF", "load BPF programs and maps"},
	{38, "CAP_PERFMON", "read kernel memory from BPF (socket error, process start time) and attach the tracepoint"},
	{12, "CAP_NET_ADMIN", "attach programs to the cgroup2 root"},
}

const capSysAdmin = 21

// CheckSystem reports, in one error, everything the collector needs that
// this node lacks: kernel BTF, a cgroup2 mount, the BPF ring buffer, and
// privilege. cgroupRoot may be empty to look for the cgroup2 mount.
func CheckSystem(cgroupRoot string) error {
	var problems []string

	if _, err := os.Stat(btfPath); err != nil {
		problems = append(problems, fmt.Sprintf("kernel BTF: %s is missing; the kernel needs CONFIG_DEBUG_INFO_BTF=y (Linux ≥ 5.15 with BTF)", btfPath))
	}
	if cgroupRoot == "" {
		if _, err := Cgroup2Mount(); err != nil {
			problems = append(problems, fmt.Sprintf("cgroup v2: %v", err))
		}
	} else if err := checkCgroup2(cgroupRoot); err != nil {
		problems = append(problems, fmt.Sprintf("cgroup v2: %v", err))
	}
	missing, err := missingCaps()
	switch {
	case err != nil:
		problems = append(problems, fmt.Sprintf("privilege: %v", err))
	case len(missing) > 0:
		problems = append(problems, "privilege: missing "+strings.Join(missing, ", ")+"; run as root or grant these capabilities")
	default:
		// Probing map types needs privilege: only meaningful once we have it.
		if err := features.HaveMapType(ebpf.RingBuf); err != nil {
			problems = append(problems, fmt.Sprintf("BPF ring buffer: %v (Linux ≥ 5.8 needed)", err))
		}
	}
	if len(problems) == 0 {
		return nil
	}
	return fmt.Errorf("%w:\n  - %s", ErrUnsupported, strings.Join(problems, "\n  - "))
}

func missingCaps() ([]string, error) {
	eff, err := effectiveCaps()
	if err != nil {
		return nil, err
	}
	// CAP_SYS_ADMIN stands in for all three.
	admin := eff&(1<<capSysAdmin) != 0
	var missing []string
	for _, c := range neededCaps {
		if eff&(1<<c.bit) != 0 || admin {
			continue
		}
		missing = append(missing, fmt.Sprintf("%s (to %s)", c.name, c.why))
	}
	return missing, nil
}

func effectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, fmt.Errorf("read capabilities: %w", err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("read capabilities: no CapEff in /proc/self/status")
}

// Cgroup2Mount returns where the cgroup2 filesystem is mounted, read from
// /proc/self/mountinfo: /sys/fs/cgroup on a unified host, often
// /sys/fs/cgroup/unified on a hybrid one.
func Cgroup2Mount() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	return cgroup2MountFrom(f)
}

func cgroup2MountFrom(r io.Reader) (string, error) {
	s := bufio.NewScanner(r)
	s.Buffer(make([]byte, 0, 4096), 1<<20)
	best := ""
	for s.Scan() {
		// id parent major:minor root mountpoint options [optional...] - fstype source superopts
		pre, post, ok := strings.Cut(s.Text(), " - ")
		if !ok {
			continue
		}
		fstype, _, _ := strings.Cut(post, " ")
		fields := strings.Fields(pre)
		if fstype != "cgroup2" || len(fields) < 5 {
			continue
		}
		// A cgroup2 mount whose root is not the hierarchy's root (a
		// container's view) would hide other cgroups: prefer the full one.
		mnt := unescapeMount(fields[4])
		if fields[3] == "/" {
			return mnt, nil
		}
		if best == "" {
			best = mnt
		}
	}
	if err := s.Err(); err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	if best != "" {
		return best, nil
	}
	return "", errors.New("no cgroup2 filesystem is mounted (mount -t cgroup2 none /sys/fs/cgroup)")
}

// unescapeMount undoes the octal escapes (\040 for a space) of mountinfo.
func unescapeMount(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func checkCgroup2(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return fmt.Errorf("%s is not a cgroup2 filesystem", path)
	}
	return nil
}

// ensureTracefs mounts tracefs where the tracepoint attach code looks for it,
// when no tracefs is mounted yet: many hosts do not mount it at boot.
func ensureTracefs() (mounted string, err error) {
	for _, p := range []string{"/sys/kernel/tracing", "/sys/kernel/debug/tracing"} {
		if _, err := os.Stat(p + "/events"); err == nil {
			return "", nil
		}
	}
	const p = "/sys/kernel/tracing"
	if err := unix.Mount("tracefs", p, "tracefs", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		return "", fmt.Errorf("mount tracefs at %s (needed for the connect tracepoint): %w", p, err)
	}
	return p, nil
}
