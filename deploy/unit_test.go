package deploy

import (
	"bufio"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/callscope/callscope/internal/kerneltest"
	"github.com/callscope/callscope/scope"
)

const unitPath = "vagrant/callscope.service"

// unitFile is what these tests read of a systemd unit.
type unitFile struct {
	execStart []string
	caps      []string            // CapabilityBoundingSet, as Kubernetes names them: BPF, NET_ADMIN
	env       []string            // Environment=
	settings  map[string][]string // [Service] key → values, in order
}

// readUnit parses the [Service] section of the agent's unit: no quoting but
// double quotes, no specifiers, which is all the unit uses.
func readUnit(t *testing.T) unitFile {
	t.Helper()
	f, err := os.Open(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	u := unitFile{settings: map[string][]string{}}
	section := ""
	s := bufio.NewScanner(f)
	for s.Scan() {
		line := strings.TrimSpace(s.Text())
		switch {
		case line == "" || line[0] == '#' || line[0] == ';':
			continue
		case line[0] == '[':
			section = line
			continue
		case section != "[Service]":
			continue
		}
		key, value, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: not a setting: %q", unitPath, line)
		}
		u.settings[key] = append(u.settings[key], value)
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}

	exec := u.settings["ExecStart"]
	if len(exec) != 1 {
		t.Fatalf("%s: want one ExecStart=, have %d", unitPath, len(exec))
	}
	// Prefixes such as - or + change how systemd runs the command; the
	// agent's unit must use none, and + would lift the sandbox.
	if strings.ContainsAny(exec[0][:1], "-@:+!") {
		t.Fatalf("%s: ExecStart= has a prefix: %q", unitPath, exec[0])
	}
	u.execStart = splitCommand(exec[0])
	for _, v := range u.settings["CapabilityBoundingSet"] {
		for _, c := range strings.Fields(v) {
			u.caps = append(u.caps, strings.TrimPrefix(c, "CAP_"))
		}
	}
	for _, v := range u.settings["Environment"] {
		u.env = append(u.env, splitCommand(v)...)
	}
	return u
}

// splitCommand splits at spaces, keeping double-quoted words whole.
func splitCommand(s string) []string {
	var out []string
	var cur strings.Builder
	quoted, inWord := false, false
	for _, r := range s {
		switch {
		case r == '"':
			quoted, inWord = !quoted, true
		case r == ' ' && !quoted:
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out
}

// setting is the one value of a [Service] key.
func (u unitFile) setting(key string) string {
	v := u.settings[key]
	if len(v) == 0 {
		return ""
	}
	return v[len(v)-1]
}

// withFlags rewrites a command line: each flag in set takes the value
// given, or is dropped where the value is "". Flags may be written
// --name value or --name=value; flags set but absent are appended.
func withFlags(args []string, set map[string]string) []string {
	out := []string{args[0]}
	done := map[string]bool{}
	for i := 1; i < len(args); i++ {
		a := args[i]
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		v, ok := set[name]
		if !strings.HasPrefix(a, "--") || !ok {
			out = append(out, a)
			continue
		}
		// Boolean flags take their value only after "=".
		if !hasValue && name != "stdout" && i+1 < len(args) {
			i++
		}
		done[name] = true
		if v != "" {
			out = append(out, "--"+name+"="+v)
		}
	}
	for _, name := range slices.Sorted(func(yield func(string) bool) {
		for k := range set {
			if !yield(k) {
				return
			}
		}
	}) {
		if !done[name] && set[name] != "" {
			out = append(out, "--"+name+"="+set[name])
		}
	}
	return out
}

func TestUnitFile(t *testing.T) {
	u := readUnit(t)
	if len(u.execStart) < 2 || u.execStart[0] != "/usr/local/bin/callscope" || u.execStart[1] != "run" {
		t.Fatalf("ExecStart=%v: want /usr/local/bin/callscope run ...", u.execStart)
	}
	args := strings.Join(u.execStart, " ")
	for _, want := range []string{"--policy /etc/callscope/policies", "--kafka-brokers 127.0.0.1:9092"} {
		if !strings.Contains(args, want) {
			t.Errorf("ExecStart= lacks %s", want)
		}
	}
	if ds := daemonSetCaps(t); !sameSet(u.caps, ds) {
		t.Errorf("CapabilityBoundingSet=%v, but the DaemonSet adds %v: keep them the same", u.caps, ds)
	}

	// The sandbox: each of these narrows what a compromised agent could do,
	// and none stops it from working (the smoke test runs the unit's
	// command under the same capabilities).
	for key, want := range map[string]string{
		"NoNewPrivileges":      "yes",
		"ProtectSystem":        "strict",
		"StateDirectory":       "callscope",
		"ProtectHome":          "yes",
		"PrivateTmp":           "yes",
		"PrivateDevices":       "yes",
		"ProtectKernelModules": "yes",
		"ProtectControlGroups": "yes",
		"RestrictNamespaces":   "yes",
	} {
		if got := u.setting(key); got != want {
			t.Errorf("%s=%q, want %q", key, got, want)
		}
	}
	// These would hide the processes the agent must read.
	for _, key := range []string{"ProtectProc", "ProcSubset", "PrivateNetwork", "PrivatePIDs"} {
		if v := u.setting(key); v != "" && v != "default" && v != "all" && v != "no" {
			t.Errorf("%s=%s hides what the agent must see", key, v)
		}
	}
	if spool := flagValue(u.execStart, "spool-dir"); !strings.HasPrefix(spool, "/var/lib/callscope/") {
		t.Errorf("--spool-dir %q: the spool must live under the StateDirectory, the one writable path", spool)
	}

	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Log("systemd-analyze is not installed: unit not verified")
		return
	}
	// verify checks every directive against this systemd; it needs the
	// command to exist, so the unit points at a freshly built agent.
	dir := t.TempDir()
	b, err := os.ReadFile(unitPath)
	if err != nil {
		t.Fatal(err)
	}
	unit := filepath.Join(dir, "callscope.service")
	text := strings.Replace(string(b), "ExecStart=/usr/local/bin/callscope", "ExecStart="+agentBinary(t), 1)
	if err := os.WriteFile(unit, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(analyze, "verify", unit).CombinedOutput(); err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
	// An exposure of 3.0 or less is what systemd calls OK; it is 2.8 now.
	if out, err := exec.Command(analyze, "security", "--offline=true", "--threshold=30", "--no-pager", unit).CombinedOutput(); err != nil {
		t.Errorf("systemd-analyze security: exposure above 3.0: %v\n%s", err, out)
	}
}

func flagValue(args []string, name string) string {
	for i, a := range args {
		if a == "--"+name && i+1 < len(args) {
			return args[i+1]
		}
		if v, ok := strings.CutPrefix(a, "--"+name+"="); ok {
			return v
		}
	}
	return ""
}

func sameSet(a, b []string) bool {
	a, b = slices.Clone(a), slices.Clone(b)
	slices.Sort(a)
	slices.Sort(b)
	return slices.Equal(a, b)
}

// TestUnitSmoke runs the unit's command line as systemd would in the VM:
// the agent built from this tree, as root under the unit's
// CapabilityBoundingSet and NoNewPrivileges, with the demo's policy and
// without Kafka (events on stdout instead). The demo client, a copy of
// curl, makes the demo's two calls, and both events must appear.
//
// systemd need not be running: the command runs under setpriv with the
// same capability sets, which is what the unit's sandbox does to them.
func TestUnitSmoke(t *testing.T) {
	kerneltest.Require(t)
	setpriv := requireTool(t, "setpriv")
	curl := requireTool(t, "curl")
	u := readUnit(t)
	bin := agentBinary(t)
	dir := t.TempDir()

	// The client is a copy of curl, as in the VM; the policy binds it by
	// its path here rather than /usr/local/bin, which the test leaves alone.
	client := filepath.Join(dir, "demo-client")
	b, err := os.ReadFile(curl)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(client, b, 0o755); err != nil {
		t.Fatal(err)
	}
	policy, err := os.ReadFile("vagrant/demo-client.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(policy), "exe: /usr/local/bin/demo-client") {
		t.Fatal("vagrant/demo-client.yaml no longer binds exe /usr/local/bin/demo-client")
	}
	policy = []byte(strings.Replace(string(policy), "exe: /usr/local/bin/demo-client", "exe: "+client, 1))
	policies := filepath.Join(dir, "policies")
	if err := os.Mkdir(policies, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(policies, "demo-client.yaml"), policy, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := scope.Load(policies); err != nil {
		t.Fatal(err)
	}

	metrics := freeAddr(t)
	cmdline := append([]string{bin}, u.execStart[1:]...)
	cmdline = withFlags(cmdline, map[string]string{
		"kafka-brokers": "",
		"stdout":        "true",
		"policy":        policies,
		"spool-dir":     filepath.Join(dir, "spool"),
		"metrics-addr":  metrics,
	})
	argv := append(setprivArgs(setpriv, u.caps, u.setting("NoNewPrivileges") == "yes"), cmdline...)
	t.Logf("running %s", strings.Join(argv, " "))
	a := startAgent(t, argv, u.env, metrics)
	if !a.waitReady(t, 30*time.Second) {
		_, code := a.exited()
		t.Fatalf("the unit's command exited %d before it was ready:\n%s", code, a.Stderr())
	}

	allowed := listen(t, "tcp4", "127.0.0.1:0")
	outside := listen(t, "tcp6", "[::1]:0")
	// As in demo.sh: the client holds each connection a second, so that
	// its exe can still be read when the event reaches the agent.
	for _, target := range []string{fmt.Sprintf("127.0.0.1:%d", allowed.port), fmt.Sprintf("[::1]:%d", outside.port)} {
		cmd := exec.Command(client, "-s", "--max-time", "1", "telnet://"+target)
		if out, err := cmd.CombinedOutput(); err != nil && cmd.ProcessState.ExitCode() != 28 {
			t.Fatalf("demo-client %s: %v\n%s", target, err, out)
		}
	}

	for _, c := range []struct {
		port    int
		verdict string
	}{{allowed.port, "allowed"}, {outside.port, "violation"}} {
		ev := a.waitEvent(t, "demo-client to port "+strconv.Itoa(c.port), func(ev agentEvent) bool {
			return ev.Kind == "connect" && ev.Dst.Port == c.port && ev.Process.Exe == client
		})
		if ev.Outcome != "established" {
			t.Errorf("outcome %q, want established: %s", ev.Outcome, ev.raw)
		}
		switch {
		case ev.Scope == nil:
			t.Logf("no verdict in the event (the agent does not judge calls yet): %s", ev.raw)
		case ev.Scope.Verdict != c.verdict:
			t.Errorf("verdict %q, want %q: %s", ev.Scope.Verdict, c.verdict, ev.raw)
		case ev.Scope.Policy != "" && ev.Scope.Policy != "demo-client":
			t.Errorf("judged by %q, want demo-client: %s", ev.Scope.Policy, ev.raw)
		}
	}
}
