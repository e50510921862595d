// Command soak runs the agent for a while under a steady mixed load and
// checks that it stays flat and loses nothing silently.
//
//	soak -agent bin/callscope -duration 2m
//
// It makes a cgroup of its own and starts the agent on it (--cgroup-root),
// with a policy file and Kafka: a Kafka-protocol broker in this process
// (kfake), on loopback. Worker processes in the cgroup make, each at its
// own steady rate: connects that are accepted, connects that are refused,
// TLS handshakes with a server name, DNS lookups answered on port 53 and
// the connects that follow, and short-lived processes that connect once
// and exit. Meanwhile the policy file is rewritten every -reload-every
// (every third time with a mistake, which the agent must refuse), and
// Kafka goes away for -outage from 30 % of the run: nftables drops the
// broker's port, then lets it through again.
//
// Every -sample-every it samples the agent's RSS, goroutines, open fds,
// and its BPF maps (how many, and their memlock), and the spool. At the
// end it waits for the spool to drain, stops the agent, and reads the
// events topic back whole. It passes when
//   - after the outage and a settling time, each sample series has a
//     least-squares slope within its bound (flat);
//   - its mean then is within a bound of its mean between the warm-up and
//     the outage (an outage leaves nothing behind);
//   - the connects and TLS handshakes the workers made equal the distinct
//     events read back plus the losses the stream's loss events count:
//     none unaccounted.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
)

const (
	eventsTopic     = "callscope.events"
	violationsTopic = "callscope.violations"
	dnsServer       = "127.0.79.53"
	soakName        = "svc.soak.test"
	workerEnv       = "CALLSCOPE_SOAK_WORKER"
)

func main() {
	if os.Getenv(workerEnv) != "" {
		if err := worker(os.Getenv(workerEnv)); err != nil {
			fmt.Fprintln(os.Stderr, "soak worker:", err)
			os.Exit(2)
		}
		return
	}
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "soak:", err)
		os.Exit(1)
	}
}

type config struct {
	agent                         string
	duration, outage, reloadEvery time.Duration
	sampleEvery                   time.Duration
	rssSlope, countSlope          float64 // bounds, per minute
	rssStep, countStep            float64
	rate                          int // accepted connects per second; the other kinds are a fraction of it
	keep                          string
}

func run() error {
	var cfg config
	flag.StringVar(&cfg.agent, "agent", "bin/callscope", "the agent `binary`")
	flag.DurationVar(&cfg.duration, "duration", 2*time.Minute, "how long the load runs")
	flag.DurationVar(&cfg.outage, "outage", 0, "how long Kafka is away, in the middle of the run (default a sixth of -duration)")
	flag.DurationVar(&cfg.reloadEvery, "reload-every", 10*time.Second, "how often the policy file is rewritten")
	flag.DurationVar(&cfg.sampleEvery, "sample-every", 2*time.Second, "how often the agent is sampled")
	flag.Float64Var(&cfg.rssSlope, "max-rss-slope", 2, "the RSS slope allowed after the outage, in MiB per minute")
	flag.Float64Var(&cfg.countSlope, "max-count-slope", 2, "the goroutine, fd and BPF map slope allowed after the outage, per minute")
	flag.Float64Var(&cfg.rssStep, "max-rss-step", 8, "how far the mean RSS after the outage may be above the mean before it, in MiB")
	flag.Float64Var(&cfg.countStep, "max-count-step", 2, "how far the mean goroutines, fds and BPF maps after the outage may be above the means before it")
	flag.IntVar(&cfg.rate, "rate", 100, "accepted connects per second")
	flag.StringVar(&cfg.keep, "keep", "", "a `directory` for the agent's log and the samples")
	flag.Parse()
	if cfg.outage == 0 {
		cfg.outage = cfg.duration / 6
	}
	if os.Geteuid() != 0 {
		return errors.New("run as root: the agent loads BPF programs, and the outage takes nftables")
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil)).With("component", "soak")
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	work, err := os.MkdirTemp("", "callscope-soak")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	cg, cleanup, err := makeCgroup()
	if err != nil {
		return err
	}
	defer cleanup()

	// Kafka on a port of its own, so that the outage can drop it alone.
	port, err := freePort()
	if err != nil {
		return err
	}
	cluster, err := kfake.NewCluster(kfake.Ports(port), kfake.SeedTopics(1, eventsTopic, violationsTopic))
	if err != nil {
		return fmt.Errorf("start kafka: %w", err)
	}
	defer cluster.Close()
	broker := fmt.Sprintf("127.0.0.1:%d", port)

	srv, err := startServers(ctx)
	if err != nil {
		return err
	}
	policy := filepath.Join(work, "policy.yaml")
	if err := writePolicy(policy, 0); err != nil {
		return err
	}
	metricsPort, err := freePort()
	if err != nil {
		return err
	}
	metrics := fmt.Sprintf("127.0.0.1:%d", metricsPort)
	agentLog, err := os.Create(filepath.Join(work, "agent.log"))
	if err != nil {
		return err
	}
	defer agentLog.Close()
	agent := exec.Command(cfg.agent, "run", "--cgroup-root", cg.path, "--policy", policy,
		"--kafka-brokers", broker, "--spool-dir", filepath.Join(work, "spool"),
		"--metrics-addr", metrics, "--stdout=false", "--node-name", "soak")
	agent.Stdout, agent.Stderr = agentLog, agentLog
	if err := agent.Start(); err != nil {
		return fmt.Errorf("start agent: %w", err)
	}
	agentDone := make(chan error, 1)
	go func() { agentDone <- agent.Wait() }()
	defer agent.Process.Kill()
	if err := waitReady(metrics, agentDone); err != nil {
		return err
	}
	log.Info("agent ready", "pid", agent.Process.Pid, "cgroup", cg.path, "kafka", broker)

	workers, err := startWorkers(cfg, cg, srv)
	if err != nil {
		return err
	}
	defer workers.kill()

	samples := sampler{pid: agent.Process.Pid, metrics: metrics}
	start := time.Now()
	end := start.Add(cfg.duration)
	outageAt := start.Add(cfg.duration * 3 / 10)
	var outage *outage
	reloads := 0
	sampleTick := time.NewTicker(cfg.sampleEvery)
	defer sampleTick.Stop()
	reloadTick := time.NewTicker(cfg.reloadEvery)
	defer reloadTick.Stop()
	samples.take(0)
loop:
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-agentDone:
			return fmt.Errorf("the agent exited during the run: %v; its log:\n%s", err, tail(agentLog.Name()))
		case <-sampleTick.C:
			if err := samples.take(time.Since(start)); err != nil {
				return err
			}
		case <-reloadTick.C:
			reloads++
			if err := writePolicy(policy, reloads); err != nil {
				return err
			}
		case <-time.After(time.Until(end)):
			break loop
		}
		switch now := time.Now(); {
		case outage == nil && now.After(outageAt):
			if outage, err = startOutage(port); err != nil {
				return err
			}
			log.Info("kafka away", "for", cfg.outage)
		case outage != nil && !outage.ended && now.After(outageAt.Add(cfg.outage)):
			if err := outage.end(); err != nil {
				return err
			}
			log.Info("kafka back")
		}
	}
	if outage != nil && !outage.ended {
		outage.end()
	}
	made, err := workers.stop()
	if err != nil {
		return err
	}
	log.Info("load stopped", "made", made)

	// Everything the agent holds reaches Kafka, then it stops.
	if err := waitDrained(metrics, 2*time.Minute); err != nil {
		return err
	}
	final, err := scrape(metrics)
	if err != nil {
		return err
	}
	samples.take(time.Since(start))
	agent.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-agentDone:
		if err != nil {
			return fmt.Errorf("agent exit after SIGTERM: %v", err)
		}
	case <-time.After(time.Minute):
		return errors.New("the agent did not exit within a minute of SIGTERM")
	}
	got, err := readBack(ctx, broker)
	if err != nil {
		return err
	}

	ok := report(os.Stdout, cfg, samples.rows, made, got, reloads)
	// What the run meant to exercise, the agent must have seen.
	failures := 0.0
	for k, v := range final {
		if strings.HasPrefix(k, "callscope_kafka_delivery_failures_total{") {
			failures += v
		}
	}
	for _, c := range []struct {
		what string
		n    float64
	}{
		{"policy reloads", final[`callscope_policy_reloads_total{result="ok"}`]},
		{"refused policy reloads", final[`callscope_policy_reloads_total{result="error"}`]},
		{"Kafka delivery failures (the outage)", failures},
	} {
		fmt.Printf("%s: %v\n", c.what, c.n)
		if c.n == 0 {
			fmt.Printf("FAIL: no %s\n", c.what)
			ok = false
		}
	}
	if cfg.keep != "" {
		os.MkdirAll(cfg.keep, 0o755)
		copyFile(agentLog.Name(), filepath.Join(cfg.keep, "agent.log"))
		samples.write(filepath.Join(cfg.keep, "samples.tsv"))
	}
	if !ok {
		return errors.New("FAILED")
	}
	return nil
}

// cgroup is the soak's own cgroup.
type cgroup struct {
	path string
	dir  *os.File
}

func makeCgroup() (*cgroup, func(), error) {
	root := ""
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return nil, nil, err
	}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if fs := strings.Fields(sc.Text()); len(fs) > 2 && fs[2] == "cgroup2" {
			root = fs[1]
			break
		}
	}
	f.Close()
	if root == "" {
		return nil, nil, errors.New("no cgroup2 mount")
	}
	path := filepath.Join(root, fmt.Sprintf("callscope-soak-%d", os.Getpid()))
	if err := os.Mkdir(path, 0o755); err != nil {
		return nil, nil, fmt.Errorf("make cgroup: %w", err)
	}
	dir, err := os.Open(path)
	if err != nil {
		return nil, nil, err
	}
	return &cgroup{path, dir}, func() {
		dir.Close()
		for range 50 {
			if os.Remove(path) == nil {
				return
			}
			time.Sleep(100 * time.Millisecond)
		}
	}, nil
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// writePolicy writes the n-th version of the policy: versions alternate
// between two valid ones, and every third is a mistake the agent must
// refuse, keeping the one in force.
func writePolicy(path string, n int) error {
	var body string
	switch {
	case n%3 == 2:
		body = "apiVersion: callscope.dev/v1alpha1\nkind: CallScope\nmetadata: {name: soak}\nspec:\n  subject: {cgroup: \"/\"}\n  egress:\n    - to: [{cidr: 127.0.0.1/8}]\n"
	case n%2 == 0:
		body = "apiVersion: callscope.dev/v1alpha1\nkind: CallScope\nmetadata: {name: soak}\nspec:\n  subject: {cgroup: \"/\"}\n  egress:\n    - to: [{cidr: 127.0.0.0/8}]\n"
	default:
		body = "apiVersion: callscope.dev/v1alpha1\nkind: CallScope\nmetadata: {name: soak}\nspec:\n  subject: {cgroup: \"/\"}\n  egress:\n    - to: [{cidr: 127.0.0.0/8}, {dns: \"*.soak.test\"}]\n      ports: [1-65535]\n"
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(body), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

func waitReady(metrics string, done <-chan error) error {
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case err := <-done:
			return fmt.Errorf("the agent exited before it was ready: %v", err)
		default:
		}
		if resp, err := http.Get("http://" + metrics + "/readyz"); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return errors.New("the agent was not ready after 60 s")
}

// scrape returns the agent's metrics, by name with their labels.
func scrape(metrics string) (map[string]float64, error) {
	resp, err := http.Get("http://" + metrics + "/metrics")
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	out := map[string]float64{}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		out[line[:i]] = v
	}
	return out, sc.Err()
}

// waitDrained waits until the agent's spool is empty and its deliveries
// have stopped moving.
func waitDrained(metrics string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	last, still := -1.0, 0
	for time.Now().Before(deadline) {
		m, err := scrape(metrics)
		if err != nil {
			return err
		}
		d := m[`callscope_kafka_messages_delivered_total{topic="events"}`]
		if m["callscope_spool_events"] == 0 && d == last {
			if still++; still >= 3 {
				return nil
			}
		} else {
			still = 0
		}
		last = d
		time.Sleep(time.Second)
	}
	return fmt.Errorf("the spool did not drain within %v", limit)
}

func tail(path string) string {
	b, _ := os.ReadFile(path)
	if len(b) > 4000 {
		b = b[len(b)-4000:]
	}
	return string(b)
}

func copyFile(from, to string) {
	if b, err := os.ReadFile(from); err == nil {
		os.WriteFile(to, b, 0o644)
	}
}

// outage drops the broker's port on loopback until ended.
type outage struct {
	table string
	ended bool
}

func startOutage(port int) (*outage, error) {
	o := &outage{table: fmt.Sprintf("callscope_soak_%d", os.Getpid())}
	rules := fmt.Sprintf("table inet %s {\n chain output {\n  type filter hook output priority 0; policy accept;\n  tcp dport %d drop\n  tcp sport %d drop\n }\n}\n", o.table, port, port)
	cmd := exec.Command("nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("nft: %v: %s", err, out)
	}
	return o, nil
}

func (o *outage) end() error {
	o.ended = true
	if out, err := exec.Command("nft", "delete", "table", "inet", o.table).CombinedOutput(); err != nil {
		return fmt.Errorf("nft delete: %v: %s", err, out)
	}
	return nil
}
