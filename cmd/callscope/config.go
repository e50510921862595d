package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/exporter"
	"github.com/callscope/callscope/internal/metricsserver"
	"github.com/callscope/callscope/internal/yamlsyntax"
	"github.com/callscope/callscope/scope"
)

// runConfig is what `callscope run` is told.
type runConfig struct {
	configFile  string
	stdout      bool
	format      string // exporter.FormatCallscope or exporter.FormatOCSF
	metricsAddr string
	metricsAuth string // "" until resolved by resolveMetricsAuth
	metricsCert string
	metricsKey  string
	nodeName    string
	cgroupRoot  string
	kubeconfig  string
	trustDomain string
	logLevel    string
	logFormat   string

	policies       stringList // --policy, repeatable
	tlsPorts       portList
	cleartextPorts portList
	envLabel       string
	pendingTimeout time.Duration
	bpfStats       bool
	syscallErrors  bool

	kafka         kafkaFlags
	spoolDir      string
	spoolMaxBytes byteSize
}

// runFlags declares the flags of `callscope run`. Every flag may also be set
// as CALLSCOPE_<NAME> in the environment or as <name> in the --config file;
// a flag on the command line wins over the environment, which wins over the
// file.
func runFlags(cfg *runConfig) *flag.FlagSet {
	fs := flag.NewFlagSet("callscope run", flag.ContinueOnError)
	fs.StringVar(&cfg.configFile, "config", "", "YAML `file` of flag values, keyed by flag name")
	fs.BoolVar(&cfg.stdout, "stdout", true, "write events as JSON lines to stdout (logs go to stderr)")
	fs.StringVar(&cfg.format, "format", exporter.FormatCallscope, "record `format` on stdout and Kafka: callscope (the callscope/v1 events) or ocsf (OCSF "+exporter.OCSFVersion+" records)")
	fs.StringVar(&cfg.metricsAddr, "metrics-addr", "127.0.0.1:9470", "`address` serving /metrics, /healthz and /readyz; empty turns it off")
	fs.StringVar(&cfg.metricsAuth, "metrics-auth", "", "who may get /metrics: kubernetes (TLS, a bearer token the API server reviews, RBAC get on the non-resource URL /metrics) or none (default kubernetes when Kubernetes is on, else none); /healthz and /readyz stay open")
	fs.StringVar(&cfg.metricsCert, "metrics-cert-file", "", "PEM `file` of the metrics server's certificate chain, reloaded when it changes; turns TLS on (default with --metrics-auth=kubernetes: self-signed, made at start)")
	fs.StringVar(&cfg.metricsKey, "metrics-key-file", "", "PEM `file` of the key of --metrics-cert-file")
	fs.StringVar(&cfg.nodeName, "node-name", "", "node name in events (default $NODE_NAME, else the hostname)")
	fs.StringVar(&cfg.cgroupRoot, "cgroup-root", "", "cgroup2 `directory` to watch; cgroup paths are relative to it (default the cgroup2 mount)")
	fs.StringVar(&cfg.kubeconfig, "kubeconfig", "", "kubeconfig `file` for pod metadata (default: in-cluster config when running in a pod; Kubernetes off otherwise)")
	fs.StringVar(&cfg.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust `domain` of pod identities")
	fs.StringVar(&cfg.logLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&cfg.logFormat, "log-format", "text", "text or json")
	fs.DurationVar(&cfg.pendingTimeout, "pending-timeout", 10*time.Second, "how long a call only an sni rule can allow waits for its TLS ClientHello before it is judged a violation (would_violate, for a staged scope)")
	fs.BoolVar(&cfg.bpfStats, "bpf-stats", false, "have the kernel count the run time of callscope's programs, for metrics (two clock reads per program run; needs CAP_SYS_ADMIN)")
	fs.BoolVar(&cfg.syscallErrors, "syscall-errors", false, "give connects that fail inside connect(2), before a SYN, their error (ENETUNREACH, EADDRNOTAVAIL, EPERM); needs the syscall-exit tracepoint, which puts every syscall on the node on the kernel's slower path (about 50 ns each). Such connects are reported either way")
	cfg.tlsPorts = portList{ports: collector.DefaultTLSPorts}
	fs.Var(&cfg.tlsPorts, "tls-ports", "`ports` where TLS is expected, comma-separated: an established connect to one whose first data is no TLS handshake carries the finding plaintext; empty, none")
	cfg.cleartextPorts = portList{ports: scope.DefaultCleartextPorts}
	fs.Var(&cfg.cleartextPorts, "cleartext-ports", "`ports` of protocols that carry credentials in clear, comma-separated: an established connect to one carries the finding cleartext_protocol; empty, none")
	fs.StringVar(&cfg.envLabel, "environment-label", "environment", "namespace `label` whose values name environments: a call between namespaces whose values differ carries the finding cross_environment (with Kubernetes on); empty turns it off")
	fs.Var(&cfg.policies, "policy", "CallScope `path` (file or folder); repeatable, or comma-separated; reloaded on change and on SIGHUP")
	cfg.kafka.register(fs, "Kafka brokers as `host:port,...`; empty turns Kafka off")
	fs.StringVar(&cfg.spoolDir, "spool-dir", "/var/lib/callscope/spool", "`directory` where events wait while Kafka cannot take them")
	cfg.spoolMaxBytes = 256 << 20
	fs.Var(&cfg.spoolMaxBytes, "spool-max-bytes", "bound of the spool on disk, in bytes or with a KiB, MiB or GiB suffix (default 256MiB)")
	return fs
}

// envName is the environment variable for a flag: metrics-addr becomes
// CALLSCOPE_METRICS_ADDR.
func envName(flagName string) string {
	return "CALLSCOPE_" + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseRunConfig applies the command line, then the environment and the
// config file to the flags the command line left alone.
func parseRunConfig(args []string, getenv func(string) string) (*runConfig, error) {
	cfg := &runConfig{}
	fs := runFlags(cfg)
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	set, err := applyEnv(fs, getenv)
	if err != nil {
		return nil, err
	}

	if cfg.configFile != "" {
		values, err := readConfigFile(cfg.configFile, fs)
		if err != nil {
			return nil, err
		}
		for _, kv := range values {
			if set[kv.name] {
				continue
			}
			if err := fs.Set(kv.name, kv.value); err != nil {
				return nil, fmt.Errorf("%s:%d:%d: %s: %s: %s", cfg.configFile, kv.line, kv.column, kv.name, kv.shown, expected(fs.Lookup(kv.name), err))
			}
		}
	}

	if cfg.nodeName == "" {
		cfg.nodeName = getenv("NODE_NAME")
	}
	if cfg.nodeName == "" {
		h, err := os.Hostname()
		if err != nil {
			return nil, fmt.Errorf("node name: %w (set --node-name)", err)
		}
		cfg.nodeName = h
	}
	if cfg.format != exporter.FormatCallscope && cfg.format != exporter.FormatOCSF {
		return nil, fmt.Errorf("--format %q: want %s or %s", cfg.format, exporter.FormatCallscope, exporter.FormatOCSF)
	}
	if !slices.Contains([]string{"text", "json"}, cfg.logFormat) {
		return nil, fmt.Errorf("--log-format %q: want text or json", cfg.logFormat)
	}
	if !slices.Contains([]string{"", metricsserver.AuthKubernetes, metricsserver.AuthNone}, cfg.metricsAuth) {
		return nil, fmt.Errorf("--metrics-auth %q: want %s or %s", cfg.metricsAuth, metricsserver.AuthKubernetes, metricsserver.AuthNone)
	}
	if (cfg.metricsCert == "") != (cfg.metricsKey == "") {
		return nil, errors.New("--metrics-cert-file and --metrics-key-file go together")
	}
	return cfg, nil
}

// applyEnv sets each flag not on the command line from its CALLSCOPE_<NAME>
// variable, and returns the names set either way: what a config file must
// leave alone.
func applyEnv(fs *flag.FlagSet, getenv func(string) string) (map[string]bool, error) {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		v := getenv(envName(f.Name))
		if set[f.Name] || v == "" || err != nil {
			return
		}
		if serr := fs.Set(f.Name, v); serr != nil {
			err = fmt.Errorf("%s: invalid value %q for --%s", envName(f.Name), v, f.Name)
			return
		}
		set[f.Name] = true
	})
	return set, err
}

// stringList is a repeatable flag; each value may also list several,
// comma-separated, as the environment and the config file can give only one.
type stringList []string

func (l *stringList) String() string { return strings.Join(*l, ",") }

func (l *stringList) Set(v string) error {
	for _, p := range strings.Split(v, ",") {
		if p = strings.TrimSpace(p); p != "" {
			*l = append(*l, p)
		}
	}
	return nil
}

// portList is a flag of TCP ports, comma-separated. A default stands until
// the flag is first set; then the values given replace it, and an empty
// value leaves none.
type portList struct {
	ports []uint16
	set   bool
}

func (l *portList) String() string {
	if l == nil {
		return ""
	}
	s := make([]string, len(l.ports))
	for i, p := range l.ports {
		s[i] = strconv.Itoa(int(p))
	}
	return strings.Join(s, ",")
}

func (l *portList) Set(v string) error {
	if !l.set {
		l.ports, l.set = []uint16{}, true
	}
	for _, f := range strings.Split(v, ",") {
		if f = strings.TrimSpace(f); f == "" {
			continue
		}
		n, err := strconv.ParseUint(f, 10, 16)
		if err != nil || n == 0 {
			return fmt.Errorf("want ports from 1 to 65535, comma-separated, such as 443,8443")
		}
		if !slices.Contains(l.ports, uint16(n)) {
			l.ports = append(l.ports, uint16(n))
		}
	}
	return nil
}

// byteSize is a size in bytes, given plainly or with a binary suffix.
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(v string) error {
	mult := int64(1)
	for _, u := range []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}} {
		if n, ok := strings.CutSuffix(v, u.suffix); ok {
			v, mult = n, u.mult
			break
		}
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil || n <= 0 || n > math.MaxInt64/mult {
		return fmt.Errorf("want a byte size such as 268435456 or 256MiB")
	}
	*b = byteSize(n * mult)
	return nil
}

type configValue struct {
	name, value  string
	shown        string // the value as the file has it, for messages
	line, column int
}

// expected says what a flag takes. The flag package's own errors say no
// more than "parse error" for a bool or a duration.
func expected(f *flag.Flag, err error) string {
	if g, ok := f.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case bool:
			return "want true or false"
		case time.Duration:
			return "want a duration such as 10s or 1m30s"
		}
	}
	return err.Error()
}

// readConfigFile reads a YAML mapping of flag names to values. An unknown
// name is an error, with its line, so a typo is never silently ignored;
// so is a name given twice, and a second document.
func readConfigFile(path string, fs *flag.FlagSet) ([]configValue, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read config: %w", err)
	}
	// yaml.v3's messages give the wrong line of a syntax error, or none.
	syntaxError := func(err error) error {
		if found := yamlsyntax.Find(b); found != nil {
			return fmt.Errorf("%s:%d:%d: invalid YAML: %s", path, found.Line, found.Column, found.Msg)
		}
		return fmt.Errorf("%s: %w", path, err)
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil // empty file
		}
		return nil, syntaxError(err)
	}
	var next yaml.Node
	switch err := dec.Decode(&next); {
	case err == nil:
		return nil, fmt.Errorf("%s:%d:%d: a second document; the file is one mapping of flag names to values", path, next.Line, next.Column)
	case !errors.Is(err, io.EOF):
		return nil, syntaxError(err)
	}
	if len(doc.Content) == 0 {
		return nil, nil
	}
	m := doc.Content[0]
	if m.Kind == yaml.ScalarNode && m.ShortTag() == "!!null" {
		return nil, nil // comments only
	}
	if m.Kind != yaml.MappingNode {
		return nil, fmt.Errorf("%s:%d:%d: want a mapping of flag names to values", path, m.Line, m.Column)
	}
	var out []configValue
	keys := map[string]*yaml.Node{}
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := m.Content[i], m.Content[i+1]
		if k.Kind != yaml.ScalarNode || k.Value == "config" || fs.Lookup(k.Value) == nil {
			return nil, fmt.Errorf("%s:%d:%d: unknown setting %s", path, k.Line, k.Column, shown(k))
		}
		if first := keys[k.Value]; first != nil {
			return nil, fmt.Errorf("%s:%d:%d: %s: given twice (first at %d:%d)", path, k.Line, k.Column, k.Value, first.Line, first.Column)
		}
		keys[k.Value] = k
		if _, repeatable := fs.Lookup(k.Value).Value.(*stringList); repeatable && v.Kind == yaml.SequenceNode {
			for _, item := range v.Content {
				if item.Kind != yaml.ScalarNode {
					return nil, fmt.Errorf("%s:%d:%d: %s: %s: want a list of single values", path, item.Line, item.Column, k.Value, shown(item))
				}
				out = append(out, configValue{name: k.Value, value: item.Value, shown: shown(item), line: item.Line, column: item.Column})
			}
			continue
		}
		if v.Kind != yaml.ScalarNode {
			return nil, fmt.Errorf("%s:%d:%d: %s: %s: want a single value", path, v.Line, v.Column, k.Value, shown(v))
		}
		out = append(out, configValue{name: k.Value, value: v.Value, shown: shown(v), line: v.Line, column: v.Column})
	}
	return out, nil
}

// shown describes a value in a message.
func shown(n *yaml.Node) string {
	switch {
	case n.Kind == yaml.MappingNode:
		return "a mapping"
	case n.Kind == yaml.SequenceNode:
		return "a list"
	case n.Kind == yaml.AliasNode:
		return "an alias"
	case n.ShortTag() == "!!null":
		return "null"
	}
	v := n.Value
	if len(v) > 64 {
		v = v[:64] + "..."
	}
	return strconv.Quote(v)
}
