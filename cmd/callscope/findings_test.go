package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callscope/callscope/internal/kerneltest"
)

// readingListener accepts on addr and reads each connection to its end,
// so that a client's first data is taken in whatever it is.
func readingListener(t *testing.T, addr string) netip.AddrPort {
	t.Helper()
	return serve(t, addr, func(c net.Conn) {
		c.SetDeadline(time.Now().Add(time.Second))
		io.Copy(io.Discard, c)
		c.Close()
	})
}

type findingEvent struct {
	Kind     string `json:"kind"`
	Findings []struct {
		ID     string `json:"id"`
		OWASP  string `json:"owasp"`
		Reason string `json:"reason"`
	} `json:"findings"`
	Process struct {
		TTY      bool    `json:"tty"`
		LoginUID *uint32 `json:"login_uid"`
	} `json:"process"`
}

func (e findingEvent) ids() []string {
	var ids []string
	for _, f := range e.Findings {
		ids = append(ids, f.ID)
	}
	return ids
}

// findingsOf decodes the events of pid of kind.
func (a *agent) findingsOf(t *testing.T, pid int, kind string) []findingEvent {
	t.Helper()
	var out []findingEvent
	for _, line := range a.lines(pid) {
		var e findingEvent
		if err := json.Unmarshal(line, &e); err != nil {
			t.Fatal(err)
		}
		if e.Kind == kind {
			out = append(out, e)
		}
	}
	return out
}

// kernelKeepsLoginUID says whether the kernel keeps login uids (CONFIG_AUDIT).
func kernelKeepsLoginUID() bool {
	_, err := os.Stat("/proc/self/loginuid")
	return err == nil
}

// TestAgentFindings runs the agent and makes, from real processes in real
// cgroups, each call a finding is about: a shell of a pod's container and
// one of a systemd unit's, with and without a terminal (a pty opened here)
// and a login uid; plaintext to a TLS port; a connect to a cleartext
// protocol's port; an OpenSSL client offering TLS 1.0 only, and one
// sending no server name.
func TestAgentFindings(t *testing.T) {
	kerneltest.Require(t)
	tlsPort := readingListener(t, "127.0.0.1:0")
	ftpLike := readingListener(t, "127.0.0.1:0")
	other := readingListener(t, "127.0.0.1:0")
	a := startAgent(t, "--tls-ports", fmt.Sprint(tlsPort.Port()), "--cleartext-ports", fmt.Sprint(ftpLike.Port()))

	pod := kerneltest.NewCgroup(t, "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1b6f0c2e_5d7a_4c1b_9f3e_2a8d4c6b0e11.slice/cri-containerd-"+strings.Repeat("ab", 32)+".scope")
	unit := kerneltest.NewCgroup(t, "system.slice/billing.service")
	plain := kerneltest.NewCgroup(t, "findings")

	unset := uint32(4294967295)
	login := uint32(1000)
	keeps := kernelKeepsLoginUID()
	for _, tc := range []struct {
		name     string
		cg       *kerneltest.Cgroup
		tty      bool
		loginUID *uint32
		human    bool
	}{
		{"a pod's process, no session", pod, false, &unset, false},
		{"kubectl exec -it into a pod", pod, true, &unset, true},
		{"a unit's process, no session", unit, false, &unset, false},
		{"ssh then sudo -u as a unit", unit, false, &login, true},
		{"a terminal outside any workload", plain, true, &login, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if !keeps {
				tc.loginUID = nil
				if !tc.tty {
					tc.human = false
				}
			}
			pid, _ := kerneltest.Connect{Addrs: []netip.AddrPort{other}, Cgroup: tc.cg, TTY: tc.tty, LoginUID: tc.loginUID}.Run(t)
			a.await(t, pid, 1)
			e := a.findingsOf(t, pid, "connect")[0]
			if got := slices.Contains(e.ids(), "human_use"); got != tc.human {
				t.Errorf("human_use %v, want %v: %+v", got, tc.human, e)
			}
			if e.Process.TTY != tc.tty {
				t.Errorf("process.tty %v, want %v", e.Process.TTY, tc.tty)
			}
			if tc.loginUID != nil && *tc.loginUID != unset && (e.Process.LoginUID == nil || *e.Process.LoginUID != *tc.loginUID) {
				t.Errorf("process.login_uid %v, want %d", e.Process.LoginUID, *tc.loginUID)
			}
			if tc.loginUID != nil && *tc.loginUID == unset && e.Process.LoginUID != nil {
				t.Errorf("process.login_uid %d, want none", *e.Process.LoginUID)
			}
			if tc.human && (e.Findings[0].OWASP != "NHI10" || !strings.Contains(e.Findings[0].Reason, "a person's session")) {
				t.Errorf("finding %+v", e.Findings[0])
			}
		})
	}

	t.Run("plaintext to a TLS port", func(t *testing.T) {
		pid, _ := kerneltest.Connect{Addrs: []netip.AddrPort{tlsPort}, Cgroup: plain, LoginUID: &unset, Send: "GET / HTTP/1.1\r\nHost: x\r\n\r\n"}.Run(t)
		a.await(t, pid, 1)
		if got := a.findingsOf(t, pid, "connect")[0].ids(); !slices.Equal(got, []string{"plaintext"}) {
			t.Errorf("findings %v, want plaintext", got)
		}
	})
	t.Run("a cleartext protocol", func(t *testing.T) {
		pid, _ := kerneltest.Connect{Addrs: []netip.AddrPort{ftpLike}, Cgroup: plain, LoginUID: &unset, Send: "USER billing\r\n"}.Run(t)
		a.await(t, pid, 1)
		if got := a.findingsOf(t, pid, "connect")[0].ids(); !slices.Equal(got, []string{"cleartext_protocol"}) {
			t.Errorf("findings %v, want cleartext_protocol", got)
		}
	})
	t.Run("another port sends anything", func(t *testing.T) {
		pid, _ := kerneltest.Connect{Addrs: []netip.AddrPort{other}, Cgroup: plain, LoginUID: &unset, Send: "hello"}.Run(t)
		a.await(t, pid, 1)
		if got := a.findingsOf(t, pid, "connect")[0].ids(); len(got) != 0 {
			t.Errorf("findings %v, want none", got)
		}
	})

	openssl, err := exec.LookPath("openssl")
	if err != nil {
		t.Fatalf("openssl is needed: %v", err)
	}
	sClient := func(t *testing.T, args ...string) int {
		t.Helper()
		cmd := exec.Command(openssl, append([]string{"s_client", "-connect", other.String()}, args...)...)
		cmd.Stdin = strings.NewReader("")
		kerneltest.InCgroup(cmd, plain)
		out, _ := cmd.CombinedOutput() // the server never answers the handshake
		t.Logf("openssl s_client %s: %s", strings.Join(args, " "), lastLine(out))
		return cmd.Process.Pid
	}
	t.Run("openssl offering TLS 1.0 only", func(t *testing.T) {
		pid := sClient(t, "-tls1", "-cipher", "DEFAULT:@SECLEVEL=0", "-servername", "legacy.example.test")
		a.await(t, pid, 2)
		hellos := a.findingsOf(t, pid, "tls")
		if len(hellos) != 1 || !slices.Equal(hellos[0].ids(), []string{"legacy_tls"}) {
			t.Errorf("tls events %+v, want one with legacy_tls", hellos)
		}
	})
	t.Run("openssl sending no server name", func(t *testing.T) {
		pid := sClient(t, "-noservername")
		a.await(t, pid, 2)
		hellos := a.findingsOf(t, pid, "tls")
		if len(hellos) != 1 || !slices.Equal(hellos[0].ids(), []string{"no_sni"}) {
			t.Errorf("tls events %+v, want one with no_sni", hellos)
		}
	})

	// The agent sees the whole node, where other processes may call too:
	// the counts are at least this test's.
	time.Sleep(300 * time.Millisecond) // a scrape sees the counts of a flushed batch
	for finding, want := range map[string]int{"human_use": 2, "plaintext": 1, "cleartext_protocol": 1, "legacy_tls": 1, "no_sni": 1, "cross_environment": 0} {
		if !keeps && finding == "human_use" {
			want = 1
		}
		got, err := strconv.Atoi(a.metric(t, `callscope_findings_total{finding="`+finding+`"}`))
		if err != nil || got < want {
			t.Errorf("callscope_findings_total{finding=%q} %d (%v), want at least %d", finding, got, err, want)
		}
	}
}

func lastLine(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return lines[len(lines)-1]
}
