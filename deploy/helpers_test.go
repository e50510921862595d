package deploy

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/callscope/callscope/internal/gobin"

	utiljson "k8s.io/apimachinery/pkg/util/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"github.com/callscope/callscope/internal/kubetest"
)

// buildDir holds the agent binary, built once for every test that runs it.
var buildDir string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "callscope-deploy-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	buildDir = dir
	code := m.Run()
	kubetest.Stop()
	os.RemoveAll(dir)
	os.Exit(code)
}

var (
	buildOnce sync.Once
	builtBin  string
	buildErr  error
)

// agentBinary builds cmd/callscope as `make build` does: static, trimmed.
func agentBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		out := filepath.Join(buildDir, "callscope")
		cmd := exec.Command(gobin.Path(), "build", "-trimpath", "-o", out, "./cmd/callscope")
		cmd.Dir = repoRoot(t)
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if b, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build ./cmd/callscope: %v\n%s", err, b)
			return
		}
		builtBin = out
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return builtBin
}

// repoRoot is the module's root, the parent of this package.
func repoRoot(t testing.TB) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return filepath.Dir(wd)
}

// requireTool finds a command the test needs. Missing, it skips the test,
// or fails it where CALLSCOPE_REQUIRE_KERNEL=1 says every test must run.
func requireTool(t *testing.T, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	if os.Getenv("CALLSCOPE_REQUIRE_KERNEL") == "1" {
		t.Fatalf("CALLSCOPE_REQUIRE_KERNEL=1 but %s is not installed", name)
	}
	t.Skipf("skipping: %s is not installed", name)
	return ""
}

// yamlDocs splits a YAML file into its documents, as JSON, leaving out
// empty ones.
func yamlDocs(t *testing.T, path string) [][]byte {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	r := utilyaml.NewYAMLReader(bufio.NewReader(f))
	var docs [][]byte
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return docs
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		j, err := utilyaml.ToJSON(doc)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if s := strings.TrimSpace(string(j)); s == "null" || s == "" {
			continue
		}
		docs = append(docs, doc)
	}
}

// toObject converts one YAML document into what the API server validates:
// maps, slices, strings, bools, int64 and float64.
func toObject(t *testing.T, doc []byte) map[string]any {
	t.Helper()
	j, err := utilyaml.ToJSON(doc)
	if err != nil {
		t.Fatal(err)
	}
	var obj map[string]any
	if err := utiljson.Unmarshal(j, &obj); err != nil {
		t.Fatal(err)
	}
	return obj
}

// agentEvent is what these tests read of an event line.
type agentEvent struct {
	Kind    string `json:"kind"`
	Outcome string `json:"outcome"`
	Src     struct {
		IP   string `json:"ip"`
		Port int    `json:"port"`
	} `json:"src"`
	Dst struct {
		IP   string `json:"ip"`
		Port int    `json:"port"`
	} `json:"dst"`
	Process struct {
		Pid int    `json:"pid"`
		Exe string `json:"exe"`
	} `json:"process"`
	Cgroup struct {
		Path string `json:"path"`
	} `json:"cgroup"`
	Identity string `json:"identity"`
	Scope    *struct {
		Verdict string `json:"verdict"`
		Policy  string `json:"policy"`
	} `json:"scope"`
	raw string
}

// agent is a running `callscope run`.
type agent struct {
	cmd     *exec.Cmd
	metrics string // host:port of /metrics, /healthz and /readyz
	// tls is set where the agent serves them over TLS; waitReady then
	// does not verify the certificate, as the kubelet's probes do not.
	tls     bool
	done    chan struct{}
	waitErr error

	mu     sync.Mutex
	events []agentEvent
	stderr bytes.Buffer
}

// startAgent runs argv (the agent, possibly under setpriv) and reads its
// events. metrics is the address its --metrics-addr names.
func startAgent(t *testing.T, argv []string, env []string, metrics string) *agent {
	t.Helper()
	a := &agent{metrics: metrics, done: make(chan struct{})}
	a.cmd = exec.Command(argv[0], argv[1:]...)
	a.cmd.Env = append(os.Environ(), env...)
	a.cmd.Stderr = lockedWriter{&a.mu, &a.stderr}
	stdout, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", strings.Join(argv, " "), err)
	}
	readDone := make(chan struct{})
	go func() {
		defer close(readDone)
		s := bufio.NewScanner(stdout)
		s.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for s.Scan() {
			var ev agentEvent
			if json.Unmarshal(s.Bytes(), &ev) != nil {
				continue
			}
			ev.raw = s.Text()
			a.mu.Lock()
			a.events = append(a.events, ev)
			a.mu.Unlock()
		}
	}()
	go func() {
		<-readDone
		a.waitErr = a.cmd.Wait()
		close(a.done)
	}()
	t.Cleanup(func() { a.stop(t) })
	return a
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

func (a *agent) Stderr() string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.stderr.String()
}

// exited reports whether the agent has exited, and its exit code.
func (a *agent) exited() (bool, int) {
	select {
	case <-a.done:
		var ee *exec.ExitError
		if errors.As(a.waitErr, &ee) {
			return true, ee.ExitCode()
		}
		if a.waitErr != nil {
			return true, -1
		}
		return true, 0
	default:
		return false, 0
	}
}

// waitReady waits until /readyz answers 200 (true) or the agent exits
// (false).
func (a *agent) waitReady(t *testing.T, timeout time.Duration) bool {
	t.Helper()
	client := &http.Client{Timeout: time.Second}
	url := "http://" + a.metrics + "/readyz"
	if a.tls {
		client.Transport = &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}
		url = "https://" + a.metrics + "/readyz"
	}
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if done, _ := a.exited(); done {
			return false
		}
		resp, err := client.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return true
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("agent not ready after %v; stderr:\n%s", timeout, a.Stderr())
	return false
}

// waitExit waits for the agent to exit by itself.
func (a *agent) waitExit(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-a.done:
		_, code := a.exited()
		return code
	case <-time.After(timeout):
		t.Fatalf("agent still running after %v; stderr:\n%s", timeout, a.Stderr())
		return 0
	}
}

// waitEvent waits for an event that match accepts.
func (a *agent) waitEvent(t *testing.T, what string, match func(agentEvent) bool) agentEvent {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		a.mu.Lock()
		for _, ev := range a.events {
			if match(ev) {
				a.mu.Unlock()
				return ev
			}
		}
		a.mu.Unlock()
		if done, code := a.exited(); done {
			t.Fatalf("agent exited (%d) before %s; stderr:\n%s", code, what, a.Stderr())
		}
		time.Sleep(50 * time.Millisecond)
	}
	a.mu.Lock()
	n := len(a.events)
	a.mu.Unlock()
	t.Fatalf("no event for %s within 20s (%d other events); stderr:\n%s", what, n, a.Stderr())
	return agentEvent{}
}

// stop sends SIGTERM, as systemd and the kubelet do, and expects exit 0.
func (a *agent) stop(t *testing.T) {
	if done, _ := a.exited(); done {
		return
	}
	a.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-a.done:
		if _, code := a.exited(); code != 0 {
			t.Errorf("agent exited %d on SIGTERM, want 0; stderr:\n%s", code, a.Stderr())
		}
	case <-time.After(15 * time.Second):
		a.cmd.Process.Kill()
		<-a.done
		t.Errorf("agent did not stop within 15s of SIGTERM")
	}
}

// freeAddr finds a loopback address nothing listens on, for --metrics-addr.
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// listener accepts connections and keeps them open until the test ends,
// recording the peers' source ports.
type listener struct {
	net.Listener
	port int
}

func listen(t *testing.T, network, addr string) *listener {
	t.Helper()
	ln, err := net.Listen(network, addr)
	if err != nil {
		t.Fatalf("listen %s %s: %v", network, addr, err)
	}
	l := &listener{Listener: ln, port: ln.Addr().(*net.TCPAddr).Port}
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	})
	return l
}

// setprivArgs runs a command as root with exactly caps (names as in a
// Kubernetes securityContext, such as NET_ADMIN) as its bounding set, and
// so as its permitted and effective sets: a process of uid 0 gains its
// bounding set at exec. Nothing is inherited or ambient, as in a container
// that drops ALL and adds caps.
func setprivArgs(setpriv string, caps []string, noNewPrivs bool) []string {
	set := "-all"
	for _, c := range caps {
		set += ",+" + strings.ToLower(c)
	}
	args := []string{setpriv, "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=" + set}
	if noNewPrivs {
		args = append(args, "--no-new-privs")
	}
	return append(args, "--")
}

// procCaps reads a capability set (CapEff, CapBnd) of a process.
func procCaps(t *testing.T, pid int, field string) uint64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			var n uint64
			if _, err := fmt.Sscanf(strings.TrimSpace(v), "%x", &n); err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
