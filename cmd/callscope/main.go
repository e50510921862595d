// Command callscope is the callscope node agent: it reports every outbound
// TCP connect on the node, with the workload identity that made it.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"

	"github.com/callscope/callscope/internal/termsafe"
)

// version is set at build time (make build); otherwise the module version.
var version = ""

const usage = `callscope: which machine identity called what, and was it allowed to.

Usage:
  callscope run [flags]             run the agent (callscope run -h lists the flags)
  callscope policy check PATH...    validate CallScope files or folders; exit 0 or 1
  callscope tail [flags]            read the Kafka stream back, human friendly (callscope tail -h lists the flags)
  callscope learn [flags] [FILE...] draft CallScopes from the calls in events (callscope learn -h lists the flags)
  callscope version                 print the version
`

func main() {
	if err := run(os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) && !errors.Is(err, errReported) {
			reportError(os.Stderr, err)
		}
		os.Exit(1)
	}
}

// reportError writes the error that ended the command. It can quote what
// workloads or brokers chose, escaped here; its lines stay lines, as a
// BPF verifier's log is meant to be read.
func reportError(w io.Writer, err error) {
	fmt.Fprintln(w, "callscope:", termsafe.Message(err.Error()))
}

func run(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("no command given")
	}
	switch args[0] {
	case "run":
		cfg, err := parseRunConfig(args[1:], os.Getenv)
		if err != nil {
			return err
		}
		return runAgent(cfg, stdout, stderr)
	case "policy":
		return policyCommand(args[1:], stdout, stderr)
	case "tail":
		return tailCommand(args[1:], stdout, stderr)
	case "learn":
		return learnCommand(args[1:], os.Stdin, stdout, stderr)
	case "version", "--version", "-version":
		fmt.Fprintf(stdout, "callscope %s (%s, %s/%s)\n", buildVersion(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func buildVersion() string {
	if version != "" {
		return version
	}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := info.Main.Version
	for _, s := range info.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v = s.Value[:12]
		}
	}
	return v
}
