package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// logHostile logs, as the agent does, values a workload chose.
func logHostile(t *testing.T, format string) []string {
	t.Helper()
	var out bytes.Buffer
	log, err := newLogger(&runConfig{logLevel: "info", logFormat: format}, &out)
	if err != nil {
		t.Fatal(err)
	}
	log = log.With("component", "enrich")
	log.Info("pod metadata for "+evil, "pod", "billing"+evil, "cgroup", "/kubepods/"+evil, "k"+evil, "v",
		"error", errors.New("broker: "+evil), "del", "a\x7fb", "args", []string{"--x", evil})
	log.Error("policy reload failed", "err", errors.New("load BPF programs:\n0: (b7) r0 = 0\n1: (95) exit"))
	log.WithGroup("g"+evil).Warn("grouped", "path", "/etc/callscope/"+evil)
	lines := strings.SplitAfter(out.String(), "\n")
	if last := lines[len(lines)-1]; last != "" {
		t.Fatalf("output does not end in a line feed: %q", last)
	}
	lines = lines[:len(lines)-1]
	if len(lines) != 3 {
		t.Fatalf("%d lines for 3 records:\n%s", len(lines), out.String())
	}
	if c, ok := rawControl(out.Bytes()); ok {
		t.Errorf("log holds %s raw:\n%s", c, out.String())
	}
	return lines
}

func TestTextLogEscapes(t *testing.T) {
	lines := logHostile(t, "text")
	for _, want := range []string{
		`msg="pod metadata for \x1b[2J\x1b]0;owned\a\u009b31m\u202eevil\x7f\xff\nforged"`,
		`pod="billing\x1b[2J\x1b]0;owned\a\u009b31m\u202eevil\x7f\xff\nforged"`,
		`"k\x1b[2J\x1b]0;owned\a\u009b31m\u202eevil\x7f\xff\nforged"=v`,
		`error="broker: \x1b[2J`,
		`del=a\x7fb`, // slog leaves DEL raw and unquoted
		`args="[--x \x1b[2J`,
	} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("line lacks %s:\n%s", want, lines[0])
		}
	}
	// A multi-line error stays one record, its lines readable in it.
	if want := `err="load BPF programs:\n0: (b7) r0 = 0\n1: (95) exit"`; !strings.Contains(lines[1], want) {
		t.Errorf("line lacks %s:\n%s", want, lines[1])
	}
	if want := `"g\x1b[2J\x1b]0;owned\a\u009b31m\u202eevil\x7f\xff\nforged.path"=`; !strings.Contains(lines[2], want) {
		t.Errorf("line lacks %s:\n%s", want, lines[2])
	}
}

func TestJSONLogEscapes(t *testing.T) {
	lines := logHostile(t, "json")
	// What was logged, as encoding/json decodes it.
	valid := strings.ToValidUTF8(evil, "\ufffd")
	var rec map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &rec); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]any{
		"msg": "pod metadata for " + valid, "pod": "billing" + valid, "k" + valid: "v",
		"error": "broker: " + valid, "del": "a\x7fb", "component": "enrich",
	} {
		if rec[k] != want {
			t.Errorf("%q = %q, want %q", k, rec[k], want)
		}
	}
	for _, want := range []string{`\u001b[2J`, `\u009b31m`, `\u202eevil\u007f\ufffd\nforged`, `"del":"a\u007fb"`} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("line lacks %s:\n%s", want, lines[0])
		}
	}
	if err := json.Unmarshal([]byte(lines[1]), &rec); err != nil || rec["err"] != "load BPF programs:\n0: (b7) r0 = 0\n1: (95) exit" {
		t.Errorf("multi-line error: %q, %v", rec["err"], err)
	}
}

func TestReportErrorEscapes(t *testing.T) {
	var out bytes.Buffer
	reportError(&out, errors.New("load BPF programs: invalid argument:\n0: (b7) r0 = 0\n\tcgroup "+evil))
	want := "callscope: load BPF programs: invalid argument:\n0: (b7) r0 = 0\n\tcgroup " +
		`\x1b[2J\x1b]0;owned\a\u009b31m\u202eevil\x7f\xff` + "\nforged\n"
	if out.String() != want {
		t.Errorf("got %q\nwant %q", out.String(), want)
	}
}

func TestPolicyCheckEscapes(t *testing.T) {
	dir := t.TempDir()
	name := filepath.Join(dir, "billing\x1b]0;owned\a.yaml")
	if err := os.WriteFile(name, []byte("apiVersion: callscope.dev/v1alpha1\nkind: CallScope\nmetadata:\n  name: \"b\\e[2J\"\nspec:\n  egress: [{to: [{cidr: 10.0.0.1/8}]}]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	var stdout, stderr bytes.Buffer
	if err := policyCommand([]string{"check", dir}, &stdout, &stderr); !errors.Is(err, errReported) {
		t.Fatalf("policy check: %v", err)
	}
	if c, ok := rawControl(stderr.Bytes()); ok {
		t.Errorf("stderr holds %s raw:\n%s", c, stderr.String())
	}
	if !strings.Contains(stderr.String(), `billing\x1b]0;owned\a.yaml:`) {
		t.Errorf("stderr does not name the file escaped:\n%s", stderr.String())
	}
}
