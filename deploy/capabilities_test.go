package deploy

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/callscope/callscope/internal/kerneltest"
)

// capBits numbers the capabilities the DaemonSet may name.
var capBits = map[string]uint{
	"BPF":             unix.CAP_BPF,
	"PERFMON":         unix.CAP_PERFMON,
	"NET_ADMIN":       unix.CAP_NET_ADMIN,
	"SYS_PTRACE":      unix.CAP_SYS_PTRACE,
	"DAC_READ_SEARCH": unix.CAP_DAC_READ_SEARCH,
	"SYS_RESOURCE":    unix.CAP_SYS_RESOURCE,
	"SYS_ADMIN":       unix.CAP_SYS_ADMIN,
}

// capRun is one start of the agent under a capability set, with a connect
// of this test process made once it is ready.
type capRun struct {
	agent *agent
	event agentEvent // the connect; zero when the agent did not start
	ready bool
	code  int // exit code when it did not start
}

// runWithCaps starts the agent as root holding exactly caps, then, if it
// gets ready, connects from this process: a root process holding every
// capability, like the daemons whose calls the agent must name.
func runWithCaps(t *testing.T, caps []string) capRun {
	t.Helper()
	setpriv := requireTool(t, "setpriv")
	metrics := freeAddr(t)
	argv := append(setprivArgs(setpriv, caps, false), agentBinary(t), "run",
		"--metrics-addr="+metrics,
		"--spool-dir="+filepath.Join(t.TempDir(), "spool"))
	a := startAgent(t, argv, nil, metrics)
	r := capRun{agent: a}
	if r.ready = a.waitReady(t, 30*time.Second); !r.ready {
		r.code = a.waitExit(t, 5*time.Second)
		return r
	}

	var want uint64
	for _, c := range caps {
		want |= 1 << capBits[c]
	}
	for _, set := range []string{"CapEff", "CapBnd"} {
		if got := procCaps(t, a.cmd.Process.Pid, set); got != want {
			t.Fatalf("agent's %s is %#x, want %#x (%v)", set, got, want, caps)
		}
	}

	ln := listen(t, "tcp4", "127.0.0.1:0")
	c, err := net.Dial("tcp4", fmt.Sprintf("127.0.0.1:%d", ln.port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	self := os.Getpid()
	r.event = a.waitEvent(t, "this test's connect", func(ev agentEvent) bool {
		return ev.Kind == "connect" && ev.Dst.Port == ln.port && ev.Process.Pid == self
	})
	return r
}

// degradations say how the agent fares without a capability it can start
// without, and whether a run shows it. The DaemonSet's comments and
// deploy/README.md say the same in words.
var degradations = map[string]struct {
	symptom string
	shows   func(capRun) bool
}{
	"SYS_PTRACE": {
		"events of processes holding capabilities the agent lacks carry no exe and no identity",
		func(r capRun) bool { return r.event.Process.Exe == "" && r.event.Identity == "" },
	},
	"DAC_READ_SEARCH": {
		"cgroups cannot be opened by id, the agent walks the cgroup tree and says to grant CAP_DAC_READ_SEARCH",
		func(r capRun) bool { return strings.Contains(r.agent.Stderr(), "CAP_DAC_READ_SEARCH") },
	},
}

// TestLeastPrivilege proves the DaemonSet's capability list both enough and
// needed, item by item: the agent attaches and names this process's connect
// with exactly that list, and with any one capability removed it either
// refuses to start, naming it, or measurably loses what the capability is
// for.
func TestLeastPrivilege(t *testing.T) {
	kerneltest.Require(t)
	caps := daemonSetCaps(t)
	for _, c := range caps {
		if _, ok := capBits[c]; !ok {
			t.Fatalf("the DaemonSet adds %s, which this test does not know", c)
		}
	}

	// A capability this test's own root lacks cannot be granted to the
	// agent, and its absence would prove nothing.
	own := procCaps(t, os.Getpid(), "CapBnd")
	for _, c := range caps {
		if own&(1<<capBits[c]) == 0 {
			reason := fmt.Sprintf("this machine's root lacks CAP_%s, which the DaemonSet adds", c)
			if os.Getenv("CALLSCOPE_REQUIRE_KERNEL") == "1" {
				t.Fatalf("CALLSCOPE_REQUIRE_KERNEL=1 but %s", reason)
			}
			t.Skipf("skipping: %s", reason)
		}
	}

	full := runWithCaps(t, caps)
	if !full.ready {
		t.Fatalf("the agent does not start with the DaemonSet's capabilities %v (exit %d):\n%s", caps, full.code, full.agent.Stderr())
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if exe, err = filepath.EvalSymlinks(exe); err != nil {
		t.Fatal(err)
	}
	if full.event.Process.Exe != exe || full.event.Identity == "" {
		t.Errorf("with %v, the event misses exe %s or an identity: %s", caps, exe, full.event.raw)
	}
	for name, d := range degradations {
		if slices.Contains(caps, name) && d.shows(full) {
			t.Errorf("with %v the agent still shows what %s is for: %s", caps, name, d.symptom)
		}
	}
	full.agent.stop(t)

	for _, c := range caps {
		t.Run("without "+c, func(t *testing.T) {
			fewer := slices.DeleteFunc(slices.Clone(caps), func(s string) bool { return s == c })
			r := runWithCaps(t, fewer)
			if !r.ready {
				if r.code == 0 {
					t.Fatalf("exited 0 without CAP_%s", c)
				}
				if !strings.Contains(r.agent.Stderr(), "CAP_"+c) {
					t.Errorf("exited %d without CAP_%s, but does not name it:\n%s", r.code, c, r.agent.Stderr())
				}
				t.Logf("without CAP_%s: exit %d: %s", c, r.code, strings.TrimSpace(r.agent.Stderr()))
				return
			}
			d, ok := degradations[c]
			if !ok {
				t.Fatalf("the agent runs without CAP_%s and this test knows nothing it loses: drop it from the DaemonSet and the unit, or say here what it is for", c)
			}
			if !d.shows(r) {
				t.Errorf("without CAP_%s, want: %s; event: %s\nstderr:\n%s", c, d.symptom, r.event.raw, r.agent.Stderr())
			}
			t.Logf("without CAP_%s: runs, but %s", c, d.symptom)
		})
	}
}
