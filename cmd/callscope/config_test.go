package main

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func env(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func writeConfig(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "callscope.yaml")
	if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestConfigPrecedence(t *testing.T) {
	file := writeConfig(t, "metrics-addr: 0.0.0.0:1\nnode-name: from-file\nstdout: false\nlog-level: debug\n")
	cfg, err := parseRunConfig(
		[]string{"--config", file, "--metrics-addr", "127.0.0.1:3"},
		env(map[string]string{"CALLSCOPE_METRICS_ADDR": "127.0.0.1:2", "CALLSCOPE_NODE_NAME": "from-env"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.metricsAddr != "127.0.0.1:3" {
		t.Errorf("flag should win: metrics-addr %q", cfg.metricsAddr)
	}
	if cfg.nodeName != "from-env" {
		t.Errorf("environment should win over the file: node-name %q", cfg.nodeName)
	}
	if cfg.stdout || cfg.logLevel != "debug" {
		t.Errorf("file values not applied: stdout %v log-level %q", cfg.stdout, cfg.logLevel)
	}
}

func TestConfigFromEnvironmentOnly(t *testing.T) {
	file := writeConfig(t, "stdout: false\n")
	cfg, err := parseRunConfig(nil, env(map[string]string{"CALLSCOPE_CONFIG": file, "NODE_NAME": "worker-1"}))
	if err != nil {
		t.Fatal(err)
	}
	if cfg.stdout || cfg.nodeName != "worker-1" || cfg.metricsAddr != "127.0.0.1:9470" {
		t.Errorf("got %+v", cfg)
	}
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := parseRunConfig(nil, env(nil))
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if !cfg.stdout || cfg.metricsAddr != "127.0.0.1:9470" || cfg.nodeName != host || cfg.cgroupRoot != "" {
		t.Errorf("defaults: %+v", cfg)
	}
}

func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"unknown flag", []string{"--kafka-brokerz", "x"}, nil, "flag provided but not defined"},
		{"stray argument", []string{"extra"}, nil, `unexpected argument "extra"`},
		{"bad env value", nil, map[string]string{"CALLSCOPE_STDOUT": "maybe"}, `CALLSCOPE_STDOUT: invalid value "maybe"`},
		{"unknown key", []string{"--config", writeConfig(t, "stdout: true\nmetrics-adr: x\n")}, nil, `callscope.yaml:2:1: unknown setting "metrics-adr"`},
		{"bad value in file", []string{"--config", writeConfig(t, "\nstdout: perhaps\n")}, nil, `callscope.yaml:2:9: stdout: "perhaps": want true or false`},
		{"not a mapping", []string{"--config", writeConfig(t, "- a\n")}, nil, "want a mapping"},
		{"nested value", []string{"--config", writeConfig(t, "node-name: {a: b}\n")}, nil, "want a single value"},
		{"bad yaml", []string{"--config", writeConfig(t, "a: [\n")}, nil, "callscope.yaml"},
		{"missing file", []string{"--config", "/nonexistent/callscope.yaml"}, nil, "read config"},
		{"log format", []string{"--log-format", "xml"}, nil, "--log-format"},
		{"format", []string{"--format", "cef"}, nil, `--format "cef": want callscope or ocsf`},
		{"format from env", nil, map[string]string{"CALLSCOPE_FORMAT": "OCSF"}, `--format "OCSF": want callscope or ocsf`},
		{"metrics auth", []string{"--metrics-auth", "basic"}, nil, `--metrics-auth "basic": want kubernetes or none`},
		{"metrics cert without key", nil, map[string]string{"CALLSCOPE_METRICS_CERT_FILE": "/tls.crt"}, "--metrics-cert-file and --metrics-key-file go together"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseRunConfig(tc.args, env(tc.env))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestConfigFormat(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want string
	}{
		{"default", nil, nil, "callscope"},
		{"flag", []string{"--format", "ocsf"}, nil, "ocsf"},
		{"env", nil, map[string]string{"CALLSCOPE_FORMAT": "ocsf"}, "ocsf"},
		{"file", []string{"--config", writeConfig(t, "format: ocsf\n")}, nil, "ocsf"},
		{"flag over env", []string{"--format", "callscope"}, map[string]string{"CALLSCOPE_FORMAT": "ocsf"}, "callscope"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseRunConfig(tc.args, env(tc.env))
			if err != nil || cfg.format != tc.want {
				t.Errorf("got %+v, %v; want format %q", cfg, err, tc.want)
			}
		})
	}
}

// --kafka-brokers lists brokers as --policy lists paths: blanks name none,
// so " , " leaves Kafka off rather than dialing nothing.
func TestConfigBrokers(t *testing.T) {
	for _, tc := range []struct {
		name string
		args []string
		env  map[string]string
		want []string
	}{
		{"blank", []string{"--kafka-brokers", " , "}, nil, nil},
		{"flag", []string{"--kafka-brokers", "a:9092, b:9092"}, nil, []string{"a:9092", "b:9092"}},
		{"env", nil, map[string]string{"CALLSCOPE_KAFKA_BROKERS": "a:9092,"}, []string{"a:9092"}},
		{"file", []string{"--config", writeConfig(t, "kafka-brokers: a:9092,b:9092\n")}, nil, []string{"a:9092", "b:9092"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg, err := parseRunConfig(tc.args, env(tc.env))
			if err != nil || !slices.Equal(cfg.kafka.brokers, tc.want) {
				t.Errorf("got %+v, %v; want brokers %q", cfg, err, tc.want)
			}
		})
	}
}

func TestConfigEmptyFile(t *testing.T) {
	if _, err := parseRunConfig([]string{"--config", writeConfig(t, "")}, env(nil)); err != nil {
		t.Error(err)
	}
}

func TestCommands(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run([]string{"version"}, &out, &errb); err != nil || !strings.HasPrefix(out.String(), "callscope ") {
		t.Errorf("version: %v %q", err, out.String())
	}
	if err := run([]string{"frobnicate"}, &out, &errb); err == nil || !strings.Contains(err.Error(), "unknown command") {
		t.Errorf("unknown command: %v", err)
	}
	if err := run(nil, &out, &errb); err == nil {
		t.Error("no command: want an error")
	}
}

func TestPolicyCheck(t *testing.T) {
	var out, errb bytes.Buffer
	if err := run([]string{"policy", "check", "../../deploy/examples"}, &out, &errb); err != nil {
		t.Fatalf("examples: %v\n%s", err, errb.String())
	}
	if !strings.HasPrefix(out.String(), "ok: ") {
		t.Errorf("stdout %q", out.String())
	}
	bad := writeConfig(t, "apiVersion: callscope.dev/v1alpha1\nkind: CallScope\nmetadata: {name: x}\nspec:\n  subject: {exe: /a}\n  egress:\n  - to: [{cidr: 10.0.0.1/33}]\n    ports: [0]\n")
	errb.Reset()
	err := run([]string{"policy", "check", bad}, &out, &errb)
	if !errors.Is(err, errReported) {
		t.Fatalf("bad policy: %v", err)
	}
	for _, want := range []string{"callscope.yaml:7:", "egress[0].to[0].cidr", "callscope.yaml:8:", "egress[0].ports[0]", "2 problem(s) found"} {
		if !strings.Contains(errb.String(), want) {
			t.Errorf("stderr lacks %q:\n%s", want, errb.String())
		}
	}
	if err := run([]string{"policy", "check"}, &out, &errb); err == nil {
		t.Error("no path: want an error")
	}
}

// TestConfigFileErrors checks that each problem of the config file is
// reported at its line and column, with the setting, the value and what
// the setting takes; syntax errors too, where yaml.v3's own message gives
// the wrong line or none.
func TestConfigFileErrors(t *testing.T) {
	for _, tc := range []struct {
		name, file, want string
	}{
		{"byte size", "stdout: true\nspool-max-bytes: lots\n", `callscope.yaml:2:18: spool-max-bytes: "lots": want a byte size such as 268435456 or 256MiB`},
		{"bool", "stdout: maybe\n", `callscope.yaml:1:9: stdout: "maybe": want true or false`},
		{"null bool", "node-name: a\nstdout:\n", `callscope.yaml:2:8: stdout: null: want true or false`},
		{"duration", "pending-timeout: soon\n", `callscope.yaml:1:18: pending-timeout: "soon": want a duration such as 10s or 1m30s`},
		{"list for a single value", "metrics-addr: [1,2]\n", `callscope.yaml:1:15: metrics-addr: a list: want a single value`},
		{"mapping in a list", "policy:\n  - a\n  - {b: c}\n", `callscope.yaml:3:5: policy: a mapping: want a list of single values`},
		{"key given twice", "stdout: true\nnode-name: a\nstdout: false\n", `callscope.yaml:3:1: stdout: given twice (first at 1:1)`},
		{"tab for indentation", "stdout: true\nnode-name:\n\tworker-1\n", `callscope.yaml:3:1: invalid YAML: found character that cannot start any token; YAML is indented with spaces, not tabs`},
		{"unclosed quote", "stdout: true\nnode-name: \"worker-1\nlog-level: debug\n",
			`callscope.yaml:4:1: invalid YAML: found unexpected end of stream at the end of the file (while scanning a quoted scalar that begins at 2:12)`},
		{"unclosed bracket", "stdout: true\npolicy: [a, b\nlog-level: debug\n",
			`callscope.yaml:3:10: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence that begins at 2:9)`},
		{"bad indentation", "stdout: true\n  node-name: x\n", `callscope.yaml:2:12: invalid YAML: mapping values are not allowed in this context`},
		{"second document", "stdout: true\n---\nnode-name: x\n", `callscope.yaml:2:1: a second document; the file is one mapping of flag names to values`},
		{"document separator with content", "stdout: true\n--- node-name: x\n", `callscope.yaml:2:14: invalid YAML: mapping values are not allowed in this context`},
		{"error on the first line", "policy: [\n", `callscope.yaml:2:1: invalid YAML: did not find expected node content at the end of the file`},
		{"CRLF line endings", "stdout: true\r\nlog-level: debug\r\nspool-max-bytes: lots\r\n", `callscope.yaml:3:18: spool-max-bytes: "lots": want a byte size such as 268435456 or 256MiB`},
		{"CRLF and an unclosed bracket", "stdout: true\r\npolicy: [a, b\r\nlog-level: debug\r\n",
			`callscope.yaml:3:10: invalid YAML: did not find expected ',' or ']' (while parsing a flow sequence that begins at 2:9)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := parseRunConfig([]string{"--config", writeConfig(t, tc.file)}, env(nil))
			if err == nil {
				t.Fatalf("no error, want %q", tc.want)
			}
			if got := filepath.Base(err.Error()); got != tc.want {
				t.Errorf("error %q\n want %q", got, tc.want)
			}
		})
	}
}

func TestPortFlags(t *testing.T) {
	env := func(string) string { return "" }
	cfg, err := parseRunConfig([]string{"--node-name", "n"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.tlsPorts.String(); got != "443,6443,8443,9443,5671,9093,2379" {
		t.Errorf("default --tls-ports %s", got)
	}
	if got := cfg.cleartextPorts.String(); got != "21,23,110,143,389" {
		t.Errorf("default --cleartext-ports %s", got)
	}
	cfg, err = parseRunConfig([]string{"--node-name", "n", "--tls-ports", "8443, 443", "--tls-ports", "8443,10443", "--cleartext-ports="}, env)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.tlsPorts.ports; !slices.Equal(got, []uint16{8443, 443, 10443}) {
		t.Errorf("--tls-ports given twice: %v, want the values given, once each", got)
	}
	if got := cfg.cleartextPorts.ports; got == nil || len(got) != 0 {
		t.Errorf("--cleartext-ports= gives %#v, want none (empty, not nil)", got)
	}
	for _, bad := range []string{"0", "65536", "https", "443-444"} {
		if _, err := parseRunConfig([]string{"--tls-ports", bad}, env); err == nil || !strings.Contains(err.Error(), "want ports from 1 to 65535") {
			t.Errorf("--tls-ports %s: %v", bad, err)
		}
	}
}
