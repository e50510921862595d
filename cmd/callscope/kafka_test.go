package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/callscope/callscope/internal/kerneltest"
)

// record is what the Kafka test reads of a message.
type record struct {
	key  string
	pid  int
	kind string
	seq  uint64
	id   string
	verd string
}

// readTopic reads topic from its start until want says it has enough.
func readTopic(t *testing.T, brokers, topic string, want func([]record) bool) []record {
	t.Helper()
	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers), kgo.ConsumeTopics(topic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	var out []record
	deadline := time.Now().Add(20 * time.Second)
	for !want(out) {
		if time.Now().After(deadline) {
			t.Fatalf("read %d records of %s before timing out: %+v", len(out), topic, out)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
		fs := cl.PollFetches(ctx)
		cancel()
		fs.EachRecord(func(r *kgo.Record) {
			var v struct {
				Kind, ID string
				Seq      uint64
				Process  struct{ PID int }
				Scope    struct{ Verdict string }
			}
			if err := json.Unmarshal(r.Value, &v); err != nil {
				t.Fatalf("record %q: %v", r.Value, err)
			}
			out = append(out, record{string(r.Key), v.Process.PID, v.Kind, v.Seq, v.ID, v.Scope.Verdict})
		})
	}
	return out
}

func pidRecords(pid int) func([]record) bool {
	return func(rs []record) bool {
		for _, r := range rs {
			if r.pid == pid {
				return true
			}
		}
		return false
	}
}

// TestAgentStreamsToKafka runs the agent against an in-process broker: every
// event reaches the events topic keyed by identity, violations reach the
// violations topic as well and nothing else does; events spooled while the
// agent is killed are delivered by the next run.
func TestAgentStreamsToKafka(t *testing.T) {
	kerneltest.Require(t)
	cluster, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "callscope.events", "callscope.violations"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	brokers := cluster.ListenAddrs()[0]

	open := listenAny(t, "127.0.0.1:0")
	dir := t.TempDir()
	policy := fmt.Sprintf(`apiVersion: callscope.dev/v1alpha1
kind: CallScope
metadata: {name: kafka-e2e}
spec:
  subject: {cgroup: "/callscope-test-*/kafka"}
  egress: [{to: [{cidr: 127.0.0.1/32}], ports: [%d]}]
`, open.Port())
	if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(policy), 0o644); err != nil {
		t.Fatal(err)
	}
	spool := t.TempDir()
	args := []string{"--policy", dir, "--kafka-brokers", brokers, "--spool-dir", spool}
	a := startAgent(t, args...)
	cg := kerneltest.NewCgroup(t, "kafka")
	closed := listenAny(t, "[::1]:0")

	allowed, _ := kerneltest.Connect{Addrs: []netip.AddrPort{open}, Cgroup: cg}.Run(t)
	violating, _ := kerneltest.Connect{Addrs: []netip.AddrPort{closed}, Cgroup: cg}.Run(t)
	a.await(t, violating, 1)

	events := readTopic(t, brokers, "callscope.events", func(rs []record) bool {
		return pidRecords(allowed)(rs) && pidRecords(violating)(rs)
	})
	exe, _ := os.Executable()
	for _, r := range events {
		if r.pid != allowed && r.pid != violating {
			continue
		}
		if r.key != "exe:"+exe+" uid:0" {
			t.Errorf("key %q, want the caller's identity", r.key)
		}
		want := map[int]string{allowed: "allowed", violating: "violation"}[r.pid]
		if r.verd != want {
			t.Errorf("pid %d: verdict %q, want %q", r.pid, r.verd, want)
		}
	}
	violations := readTopic(t, brokers, "callscope.violations", pidRecords(violating))
	for _, r := range violations {
		if r.verd != "violation" {
			t.Errorf("violations topic holds %+v", r)
		}
		if r.pid == allowed {
			t.Errorf("the allowed call reached the violations topic")
		}
	}

	// The broker goes away; events wait in the spool; the agent is killed.
	cluster.Close()
	var pids []int
	for range 5 {
		pid, _ := kerneltest.Connect{Addrs: []netip.AddrPort{closed}, Cgroup: cg}.Run(t)
		pids = append(pids, pid)
	}
	a.await(t, pids[len(pids)-1], 1)
	time.Sleep(200 * time.Millisecond) // the spool write follows the stdout write
	a.cmd.Process.Kill()
	a.cmd.Wait()

	port := brokerPort(t, brokers)
	cluster, err = kfake.NewCluster(kfake.NumBrokers(1), kfake.Ports(port), kfake.SeedTopics(1, "callscope.events", "callscope.violations"))
	if err != nil {
		t.Fatal(err)
	}
	defer cluster.Close()
	startAgent(t, args...)
	got := readTopic(t, brokers, "callscope.events", func(rs []record) bool {
		for _, p := range pids {
			if !pidRecords(p)(rs) {
				return false
			}
		}
		return true
	})
	t.Logf("after the restart, %d records; the %d spooled calls are among them", len(got), len(pids))
}

func brokerPort(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return n
}
