package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/callscope/callscope/scope/learn"
)

const learnUsage = `usage: callscope learn [flags] [FILE...]

Reads events (JSON lines, as callscope run writes them) from the files, or
from stdin when none is given or a file is "-", and writes draft CallScopes,
one per caller, allowing the calls seen. A summary of what was read goes to
stderr.

Flags:
`

// learnCommand runs `callscope learn`.
func learnCommand(args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("callscope learn", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, learnUsage)
		fs.PrintDefaults()
	}
	var cfg learn.Config
	var since, until, maxPrefix, out string
	fs.StringVar(&since, "since", "", "learn from events at or after this `time` (RFC 3339); default: the first")
	fs.StringVar(&until, "until", "", "learn from events before this `time` (RFC 3339); default: the last")
	fs.StringVar(&out, "out", "", "write one file per caller into this `folder` rather than every CallScope to stdout")
	fs.IntVar(&cfg.WildcardMin, "wildcard-min", learn.DefaultWildcardMin, "distinct sibling names under one parent that make a *.parent pattern (0 or 1: never)")
	fs.StringVar(&maxPrefix, "max-prefix", fmt.Sprintf("%d,%d", learn.DefaultMaxPrefix4, learn.DefaultMaxPrefix6), "widest `IPv4,IPv6` prefixes that addresses are merged into")
	fs.IntVar(&cfg.MaxPairs, "max-pairs", learn.DefaultMaxPairs, "most distinct (caller, destination, port) pairs kept; calls past them are counted, not learnt")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if cfg.Since, err = parseFlagTime("since", since); err != nil {
		return err
	}
	if cfg.Until, err = parseFlagTime("until", until); err != nil {
		return err
	}
	if cfg.MaxPrefix4, cfg.MaxPrefix6, err = parseMaxPrefix(maxPrefix); err != nil {
		return err
	}
	if cfg.WildcardMin <= 1 {
		cfg.WildcardMin = -1 // never
	}
	if cfg.MaxPairs <= 0 {
		return fmt.Errorf("learn: --max-pairs %d: want a positive number", cfg.MaxPairs)
	}
	l, err := learn.New(cfg)
	if err != nil {
		return fmt.Errorf("learn: %w", err)
	}
	files := fs.Args()
	if len(files) == 0 {
		files = []string{"-"}
	}
	for _, name := range files {
		if err := learnFile(l, name, stdin); err != nil {
			return err
		}
	}
	drafts := l.Drafts()
	st := l.Stats()
	fmt.Fprintf(stderr, "learn: %s\n", st.Summary())
	if n := st.Skipped[learn.SkipOverCap]; n > 0 {
		fmt.Fprintf(stderr, "learn: INCOMPLETE: %d call(s) past --max-pairs %d were not learnt; the drafts say so\n", n, cfg.MaxPairs)
	}
	if len(drafts) == 0 {
		fmt.Fprintln(stderr, "learn: no calls learnt, no CallScope written")
		return nil
	}
	if out == "" {
		for i, d := range drafts {
			if i > 0 {
				if _, err := io.WriteString(stdout, "---\n"); err != nil {
					return err
				}
			}
			if _, err := stdout.Write(d.YAML); err != nil {
				return err
			}
		}
		return nil
	}
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("learn: %w", err)
	}
	for _, d := range drafts {
		if err := os.WriteFile(filepath.Join(out, d.File), d.YAML, 0o644); err != nil {
			return fmt.Errorf("learn: %w", err)
		}
	}
	fmt.Fprintf(stderr, "learn: %d CallScope(s) written to %s\n", len(drafts), out)
	return nil
}

func learnFile(l *learn.Learner, name string, stdin io.Reader) error {
	if name == "-" {
		if err := l.Read(stdin); err != nil {
			return fmt.Errorf("learn: stdin: %w", err)
		}
		return nil
	}
	f, err := os.Open(name)
	if err != nil {
		return fmt.Errorf("learn: %w", err)
	}
	defer f.Close()
	if err := l.Read(f); err != nil {
		return fmt.Errorf("learn: %s: %w", name, err)
	}
	return nil
}

func parseFlagTime(flagName, s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("learn: --%s %q: want an RFC 3339 time such as 2026-11-27T04:00:00Z", flagName, s)
	}
	return t, nil
}

func parseMaxPrefix(s string) (v4, v6 int, err error) {
	a, b, ok := strings.Cut(s, ",")
	bad := errors.New(`learn: --max-prefix ` + strconv.Quote(s) + `: want "IPv4,IPv6" prefix lengths such as 24,64 (IPv4 8 to 32, IPv6 16 to 128)`)
	if !ok {
		return 0, 0, bad
	}
	v4, err4 := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(a), "/"))
	v6, err6 := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(b), "/"))
	if err4 != nil || err6 != nil || v4 < 8 || v4 > 32 || v6 < 16 || v6 > 128 {
		return 0, 0, bad
	}
	return v4, v6, nil
}
