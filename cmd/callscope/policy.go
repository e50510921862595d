package main

import (
	"errors"
	"flag"
	"fmt"
	"io"

	"github.com/callscope/callscope/internal/termsafe"
	"github.com/callscope/callscope/scope"
)

// errReported says the command has already told the user what went wrong.
var errReported = errors.New("reported")

// policyCommand runs `callscope policy check PATH...`: it validates
// CallScope files and folders, printing every problem with its file, line
// and column, and fails if there is any.
func policyCommand(args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] != "check" {
		fmt.Fprintln(stderr, "usage: callscope policy check PATH...")
		return errors.New("policy: want the check subcommand")
	}
	fs := flag.NewFlagSet("callscope policy check", flag.ContinueOnError)
	fs.SetOutput(stderr)
	if err := fs.Parse(args[1:]); err != nil {
		return err
	}
	if fs.NArg() == 0 {
		fmt.Fprintln(stderr, "usage: callscope policy check PATH...")
		return errors.New("policy check: no file or folder given")
	}
	policies, err := scope.Load(fs.Args()...)
	var perr *scope.Errors
	switch {
	case errors.As(err, &perr):
		for _, e := range *perr {
			fmt.Fprintln(stderr, termsafe.Line(e.Error()))
		}
		fmt.Fprintf(stderr, "%d problem(s) found\n", len(*perr))
		return errReported
	case err != nil:
		return err
	}
	fmt.Fprintf(stdout, "ok: %d CallScope(s)\n", len(policies))
	return nil
}
