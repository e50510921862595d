package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callscope/callscope/exporter"
	"github.com/callscope/callscope/internal/eventschema"
	"github.com/callscope/callscope/internal/gobin"
	"github.com/callscope/callscope/internal/kerneltest"
	"github.com/callscope/callscope/internal/kubetest"
)

func TestMain(m *testing.M) {
	kerneltest.MaybeRunHelper()
	code := m.Run()
	kubetest.Stop()
	os.Exit(code)
}

// event is the part of the JSON schema the end-to-end test reads.
type event struct {
	Schema string `json:"schema"`
	ID     string `json:"id"`
	Seq    uint64 `json:"seq"`
	Time   time.Time
	Node   string `json:"node"`
	Kind   string `json:"kind"`
	Conn   string `json:"conn"`
	Proto  string `json:"proto"`
	Family string `json:"family"`
	Src    *struct {
		IP   string `json:"ip"`
		Port uint16 `json:"port"`
	} `json:"src"`
	Dst struct {
		IP         string `json:"ip"`
		Port       uint16 `json:"port"`
		Name       string `json:"name"`
		NameSource string `json:"name_source"`
	} `json:"dst"`
	Outcome string `json:"outcome"`
	Error   string `json:"error"`
	TLS     *struct {
		SNI string `json:"sni"`
	} `json:"tls"`
	Process struct {
		PID     int      `json:"pid"`
		Comm    string   `json:"comm"`
		Exe     string   `json:"exe"`
		Cmdline []string `json:"cmdline"`
		UID     *int     `json:"uid"`
		PPID    int      `json:"ppid"`
	} `json:"process"`
	Cgroup struct {
		ID   uint64 `json:"id"`
		Path string `json:"path"`
	} `json:"cgroup"`
	Container struct {
		ID      string `json:"id"`
		Runtime string `json:"runtime"`
	} `json:"container"`
	K8s struct {
		Namespace      string `json:"namespace"`
		Pod            string `json:"pod"`
		PodUID         string `json:"pod_uid"`
		ServiceAccount string `json:"service_account"`
		Workload       string `json:"workload"`
	} `json:"k8s"`
	Identity string `json:"identity"`
}

// ocsfRecord is the part of an OCSF record the agent's reader needs.
type ocsfRecord struct {
	Actor struct {
		Process struct {
			PID int `json:"pid"`
		} `json:"process"`
	} `json:"actor"`
	Unmapped struct {
		Kind string `json:"kind"`
	} `json:"unmapped"`
}

// agent is a running `callscope run` whose stdout is parsed as it comes.
type agent struct {
	cmd     *exec.Cmd
	metrics string
	mu      sync.Mutex
	events  []event
	raw     [][]byte    // the lines of events, as written
	read    []time.Time // when each line was read
	bad     []string
	done    chan struct{}
	log     *testLog
	// ocsf: the agent runs with --format ocsf; its records are read for
	// what await and lines need, the pid and the kind.
	ocsf bool
}

var binOnce struct {
	sync.Once
	path string
	err  error
}

// binary builds the agent once per test run, as `make build` does, or
// takes the one CALLSCOPE_BIN names (where there is no toolchain, as in
// internal/vmtest's guests).
func binary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if p := os.Getenv("CALLSCOPE_BIN"); p != "" {
			binOnce.path = p
			return
		}
		dir, err := os.MkdirTemp("", "callscope-bin")
		if err != nil {
			binOnce.err = err
			return
		}
		binOnce.path = filepath.Join(dir, "callscope")
		out, err := exec.Command(gobin.Path(), "build", "-o", binOnce.path, ".").CombinedOutput()
		if err != nil {
			binOnce.err = &buildError{err, string(out)}
		}
	})
	if binOnce.err != nil {
		t.Fatal(binOnce.err)
	}
	return binOnce.path
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return "go build: " + e.err.Error() + "\n" + e.out }

func freePort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func startAgent(t *testing.T, args ...string) *agent {
	t.Helper()
	return startAgentWithin(t, 10*time.Second, args...)
}

// startAgentWithin starts the agent and waits up to timeout for it to be
// ready.
func startAgentWithin(t *testing.T, timeout time.Duration, args ...string) *agent {
	t.Helper()
	kerneltest.Require(t)
	a := &agent{metrics: freePort(t), done: make(chan struct{}), log: &testLog{t: t}}
	for i := range args {
		if args[i] == "--format=ocsf" || args[i] == "--format" && i+1 < len(args) && args[i+1] == "ocsf" {
			a.ocsf = true
		}
	}
	a.cmd = exec.Command(binary(t), append([]string{"run", "--metrics-addr", a.metrics, "--node-name", "test-node"}, args...)...)
	a.cmd.Stderr = a.log
	stdout, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		a.cmd.Process.Kill()
		a.cmd.Wait()
	})
	go func() {
		defer close(a.done)
		sc := bufio.NewScanner(stdout)
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var e event
			var err error
			a.mu.Lock()
			if a.ocsf {
				var r ocsfRecord
				err = json.Unmarshal(sc.Bytes(), &r)
				e.Process.PID, e.Kind = r.Actor.Process.PID, r.Unmapped.Kind
			} else {
				err = json.Unmarshal(sc.Bytes(), &e)
			}
			if err != nil {
				a.bad = append(a.bad, sc.Text())
			} else if err := eventschema.Validate(sc.Bytes()); e.Schema == exporter.Schema && err != nil {
				// Every line of the real agent must fit the documented schema.
				a.bad = append(a.bad, err.Error()+": "+sc.Text())
			} else {
				a.events = append(a.events, e)
				a.raw = append(a.raw, bytes.Clone(sc.Bytes()))
				a.read = append(a.read, time.Now())
			}
			a.mu.Unlock()
		}
	}()
	deadline := time.Now().Add(timeout)
	for {
		if code := get(a.metrics + "/readyz"); code == http.StatusOK {
			return a
		}
		if time.Now().After(deadline) {
			t.Fatalf("agent not ready after %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func get(url string) int {
	resp, err := http.Get("http://" + url)
	if err != nil {
		return 0
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode
}

// await returns the events of pid once there are n, failing after 5s.
func (a *agent) await(t *testing.T, pid, n int) []event {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		a.mu.Lock()
		var evs []event
		for _, e := range a.events {
			if e.Process.PID == pid {
				evs = append(evs, e)
			}
		}
		bad := a.bad
		a.mu.Unlock()
		if len(bad) > 0 {
			t.Fatalf("agent wrote lines that are not JSON events: %q", bad)
		}
		if len(evs) >= n {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("got %d events from pid %d, want %d", len(evs), pid, n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// lines returns the lines of pid's events so far.
func (a *agent) lines(pid int) [][]byte {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out [][]byte
	for i, e := range a.events {
		if e.Process.PID == pid {
			out = append(out, a.raw[i])
		}
	}
	return out
}

type testLog struct {
	t    *testing.T
	mu   sync.Mutex
	text strings.Builder
}

func (l *testLog) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.t.Logf("agent: %s", strings.TrimRight(string(b), "\n"))
	l.text.Write(b)
	return len(b), nil
}

// String is what the agent logged so far.
func (l *testLog) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.text.String()
}

// TestAgentReportsConnects runs the built binary as a user would and checks
// the JSON events of a process in a cgroup made for it, over IPv4 and IPv6.
func TestAgentReportsConnects(t *testing.T) {
	a := startAgent(t)
	cg := kerneltest.NewCgroup(t, "app.slice/e2e")
	ln4, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln4.Close()
	ln6, err := net.Listen("tcp6", "[::1]:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln6.Close()
	dst4 := ln4.Addr().(*net.TCPAddr).AddrPort()
	dst6 := ln6.Addr().(*net.TCPAddr).AddrPort()

	// The caller stays alive until its events are in, as a service would.
	child := kerneltest.Connect{Addrs: []netip.AddrPort{dst4, dst6}, Cgroup: cg, Linger: true}.Command(t)
	stdin, err := child.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := child.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := child.Start(); err != nil {
		t.Fatal(err)
	}
	res, _ := io.ReadAll(out)
	if want := dst4.String() + "=ok\n" + dst6.String() + "=ok\n"; string(res) != want {
		t.Fatalf("helper said %q, want %q", res, want)
	}
	evs := a.await(t, child.Process.Pid, 2)
	stdin.Close()
	child.Wait()

	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, e := range evs {
		if e.Schema != "callscope/v1" || e.Kind != "connect" || e.Proto != "tcp" || e.Node != "test-node" {
			t.Errorf("header: %+v", e)
		}
		if e.Outcome != "established" {
			t.Errorf("outcome %q", e.Outcome)
		}
		if !strings.HasSuffix(e.ID, "-"+itoa(e.Seq)) || e.Conn == "" {
			t.Errorf("id %q seq %d conn %q", e.ID, e.Seq, e.Conn)
		}
		want := dst4
		if e.Family == "ipv6" {
			want = dst6
		}
		if e.Dst.IP != want.Addr().String() || e.Dst.Port != want.Port() {
			t.Errorf("%s dst %+v, want %v", e.Family, e.Dst, want)
		}
		if e.Src == nil || e.Src.IP != want.Addr().String() || e.Src.Port == 0 {
			t.Errorf("%s src %+v", e.Family, e.Src)
		}
		seen[e.Family] = true
		p := e.Process
		if p.Exe != exe || p.Comm != filepath.Base(exe)[:min(15, len(filepath.Base(exe)))] || p.UID == nil || *p.UID != 0 || p.PPID != os.Getpid() {
			t.Errorf("process %+v, want exe %s, ppid %d", p, exe, os.Getpid())
		}
		if !slices.Equal(p.Cmdline, []string{os.Args[0], dst4.String(), dst6.String()}) {
			t.Errorf("cmdline %q", p.Cmdline)
		}
		if e.Cgroup.Path != cg.Rel || e.Cgroup.ID != cg.ID {
			t.Errorf("cgroup %+v, want %s (%d)", e.Cgroup, cg.Rel, cg.ID)
		}
		if e.Identity != "exe:"+exe+" uid:0" {
			t.Errorf("identity %q", e.Identity)
		}
	}
	if len(evs) != 2 || !seen["ipv4"] || !seen["ipv6"] {
		t.Errorf("want one IPv4 and one IPv6 event, got %+v", evs)
	}

	// A real client: curl, when the machine has it.
	if curl, err := exec.LookPath("curl"); err == nil {
		srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})}
		go srv.Serve(ln4)
		defer srv.Close()
		cmd := exec.Command(curl, "-s", "-o", "/dev/null", "http://"+dst4.String()+"/")
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("curl: %v %s", err, out)
		}
		e := a.await(t, cmd.Process.Pid, 1)[0]
		if e.Process.Comm != "curl" || e.Outcome != "established" || e.Dst.Port != dst4.Port() {
			t.Errorf("curl's event: %+v", e)
		}
		// curl is gone before its /proc can be read: its execve tells.
		if e.Process.Exe != curl || e.Identity != "exe:"+curl+" uid:0" || len(e.Process.Cmdline) != 5 {
			t.Errorf("short-lived curl: process %+v identity %q, want exe %s", e.Process, e.Identity, curl)
		}
	}

	// Metrics count what was written.
	resp, err := http.Get("http://" + a.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`callscope_events_total{kind="connect"}`, `callscope_events_lost_total{reason="ring_buffer_full",stage="kernel"} 0`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}

	// SIGTERM: stop, flush, exit 0.
	if err := a.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Wait(); err != nil {
		t.Fatalf("agent exit after SIGTERM: %v", err)
	}
	<-a.done
	// seq rises by one per event, from 1.
	for i, e := range a.events {
		if e.Seq != uint64(i+1) {
			t.Fatalf("event %d has seq %d", i, e.Seq)
		}
	}
}

func itoa(n uint64) string {
	b, _ := json.Marshal(n)
	return string(b)
}

// TestAgentSmoke is one call through the whole agent, as internal/vmtest
// runs it on each kernel the project is tested on: a process in a cgroup
// resolves a name, connects to its address and sends a ClientHello, and a
// connect that fails before its SYN follows. The agent reports the
// connect named by the DNS answer, the tls event with the server name on
// the same connection, and the failure, each with its caller; and says
// which kernel features it has.
func TestAgentSmoke(t *testing.T) {
	a := startAgent(t)
	srv := kerneltest.NewTLSServer(t, "127.0.0.1:0")
	const name = "smoke.callscope.test"
	dns := kerneltest.NewDNSServer(t, "127.0.78.53", map[string]netip.Addr{name: srv.Addr.Addr()})
	cg := kerneltest.NewCgroup(t, "smoke.slice/app")
	pid := kerneltest.Resolve{Server: dns.Addr, Name: name, Port: srv.Addr.Port(), TLS: true, Cgroup: cg}.Run(t)
	evs := a.await(t, pid, 2)
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	byKind := map[string]event{}
	for _, e := range evs {
		byKind[e.Kind] = e
		if e.Process.Exe != exe || e.Cgroup.Path != cg.Rel || e.Identity != "exe:"+exe+" uid:0" {
			t.Errorf("%s event's caller: process %+v cgroup %+v identity %q, want %s in %s", e.Kind, e.Process, e.Cgroup, e.Identity, exe, cg.Rel)
		}
	}
	c, hello := byKind["connect"], byKind["tls"]
	if c.Outcome != "established" || c.Dst.IP != srv.Addr.Addr().String() || c.Dst.Port != srv.Addr.Port() ||
		c.Dst.Name != name || c.Dst.NameSource != "dns" {
		t.Errorf("connect %+v: want established to %v named %s by dns", c, srv.Addr, name)
	}
	if hello.TLS == nil || hello.TLS.SNI != name || hello.Conn != c.Conn || c.Conn == "" {
		t.Errorf("tls event %+v: want SNI %s on conn %q", hello, name, c.Conn)
	}

	// Nothing listens in an empty namespace: with no route, connect(2)
	// fails before any SYN, and the failure is reported once the socket
	// is closed.
	ns := kerneltest.NewNetNS(t)
	noRoute := netip.MustParseAddrPort("203.0.113.9:443")
	failed, res := kerneltest.Connect{Addrs: []netip.AddrPort{noRoute}, NetNS: ns, Cgroup: cg}.Run(t)
	if res[0] != noRoute.String()+"=ENETUNREACH" {
		t.Fatalf("helper said %v", res)
	}
	if e := a.await(t, failed, 1)[0]; e.Outcome != "failed" || e.Src != nil || e.Dst.IP != noRoute.Addr().String() || e.Process.Exe != exe {
		t.Errorf("failed before a SYN: %+v", e)
	}

	resp, err := http.Get("http://" + a.metrics + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	t.Logf("kernel %s:\n%s", kerneltest.Release(t), grepLines(string(body), "callscope_kernel_feature{"))
	if !strings.Contains(string(body), `callscope_kernel_feature{feature="unsent_connects"} 1`) {
		t.Errorf("/metrics lacks unsent_connects 1")
	}
}

func grepLines(s, prefix string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestAgentSaysWhatIsMissing: without the privilege it needs, or pointed at
// a directory that is not cgroup2, the agent names the problem and exits 1.
func TestAgentSaysWhatIsMissing(t *testing.T) {
	kerneltest.Require(t)
	capsh, err := exec.LookPath("capsh")
	if err != nil {
		t.Fatalf("capsh is needed (apt-get install libcap2-bin): %v", err)
	}
	bin := binary(t)
	for _, tc := range []struct {
		name string
		cmd  *exec.Cmd
		want []string
	}{
		{"no privilege", exec.Command(capsh, "--drop=cap_bpf,cap_perfmon,cap_sys_admin,cap_net_admin", "--",
			"-c", bin+" run --metrics-addr ''"), []string{"missing CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN"}},
		{"not cgroup2", exec.Command(bin, "run", "--metrics-addr", "", "--cgroup-root", t.TempDir()),
			[]string{"cgroup v2:", "is not a cgroup2 filesystem"}},
		{"metrics auth without Kubernetes", exec.Command(bin, "run", "--metrics-auth", "kubernetes"),
			[]string{"--metrics-auth=kubernetes needs a Kubernetes API server", "--kubeconfig"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := tc.cmd.CombinedOutput()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
				t.Fatalf("exit: %v, want status 1; output:\n%s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestAgentIdentityFromCgroupPaths places callers in real cgroups shaped as
// each runtime and kubelet driver lays them out, and checks what the events
// say of the container, the pod and the identity.
func TestAgentIdentityFromCgroupPaths(t *testing.T) {
	a := startAgent(t)
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	dst := ln.Addr().(*net.TCPAddr).AddrPort()
	const (
		id   = "3f1e6a0c8b7d4e2f9a1b0c3d5e7f9a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f"
		uid  = "1b6a1c4e-2f3d-4e5a-8b7c-9d0e1f2a3b4c"
		uidU = "1b6a1c4e_2f3d_4e5a_8b7c_9d0e1f2a3b4c"
	)
	exe, _ := os.Executable()
	exeID := "exe:" + exe + " uid:0"
	for _, tc := range []struct {
		path                            string
		container, runtime, pod, identy string
	}{
		{"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod" + uidU + ".slice/cri-containerd-" + id + ".scope", id, "containerd", uid, exeID},
		{"kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod" + uidU + ".slice/crio-" + id + ".scope", id, "cri-o", uid, exeID},
		{"kubepods/burstable/pod" + uid + "/" + id, id, "", uid, exeID},
		{"system.slice/docker-" + id + ".scope", id, "docker", "", exeID},
		{"machine.slice/libpod-" + id + ".scope", id, "podman", "", exeID},
		{"system.slice/billing.service", "", "", "", "unit:billing.service"},
		{"user.slice/user-1000.slice/session-11909.scope", "", "", "", exeID},
	} {
		t.Run(tc.path, func(t *testing.T) {
			cg := kerneltest.NewCgroup(t, tc.path)
			child := kerneltest.Connect{Addrs: []netip.AddrPort{dst}, Cgroup: cg, Linger: true}.Command(t)
			stdin, _ := child.StdinPipe()
			out, _ := child.StdoutPipe()
			if err := child.Start(); err != nil {
				t.Fatal(err)
			}
			io.ReadAll(out)
			e := a.await(t, child.Process.Pid, 1)[0]
			stdin.Close()
			child.Wait()
			if e.Container.ID != tc.container || e.Container.Runtime != tc.runtime || e.K8s.PodUID != tc.pod || e.Identity != tc.identy {
				t.Errorf("container %+v k8s %+v identity %q; want %s %s %s %q", e.Container, e.K8s, e.Identity, tc.container, tc.runtime, tc.pod, tc.identy)
			}
			if e.Cgroup.Path != cg.Rel {
				t.Errorf("cgroup path %q, want %q", e.Cgroup.Path, cg.Rel)
			}
		})
	}
}
