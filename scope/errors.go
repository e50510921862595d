package scope

import (
	"cmp"
	"slices"
	"strings"
)

// Error is one problem in a policy file.
type Error struct {
	Pos   Position
	Field string // "egress[0].to[1].cidr"; empty for the document as a whole
	Msg   string
}

func (e *Error) Error() string {
	if e.Field == "" {
		return e.Pos.String() + ": " + e.Msg
	}
	return e.Pos.String() + ": " + e.Field + ": " + e.Msg
}

// Errors is every problem found, in file order, so that a user fixes them
// all in one go rather than one per run.
type Errors []*Error

// Error gives one problem per line.
func (e *Errors) Error() string {
	lines := make([]string, len(*e))
	for i, err := range *e {
		lines[i] = err.Error()
	}
	return strings.Join(lines, "\n")
}

// sortByPosition orders the errors of one file by line and column: they are
// found per mapping, which is not the order a reader goes through the file.
func sortByPosition(errs Errors) {
	slices.SortStableFunc(errs, func(a, b *Error) int {
		return cmp.Or(cmp.Compare(a.Pos.Line, b.Pos.Line), cmp.Compare(a.Pos.Column, b.Pos.Column))
	})
}
