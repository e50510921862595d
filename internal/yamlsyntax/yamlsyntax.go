// Package yamlsyntax finds where a YAML syntax error is.
//
// yaml.v3, which reads callscope's files, says where its syntax errors are
// only in its message, and often wrongly: a parser error gives the 0-based
// line of the construct it was reading ("b: [1, 2" left open on line 2,
// noticed on line 3, says "line 1"), a scanner error gives the line where
// that construct began, an error on the first line gives none, and none
// gives a column. yaml.v4, its successor, keeps the positions as data;
// Find asks it once yaml.v3 has failed.
package yamlsyntax

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"unicode/utf8"

	yaml "go.yaml.in/yaml/v4"
)

// Error is a syntax error at a place in the input.
type Error struct {
	Line, Column int    // where the problem was seen, from 1
	Msg          string // the problem, what was being read and where it began
}

// Find reads data as a stream of YAML documents and returns its first
// syntax error, or nil if there is none.
func Find(data []byte) (found *Error) {
	defer func() {
		// A bug of the parser must not turn an error message into a crash.
		if recover() != nil {
			found = nil
		}
	}()
	l, err := yaml.NewLoader(bytes.NewReader(data))
	for err == nil {
		var doc yaml.Node
		err = l.Load(&doc)
	}
	var le *yaml.LoadError
	if errors.Is(err, io.EOF) || !errors.As(err, &le) || le.Mark.Line == 0 {
		return nil
	}
	e := &Error{Line: le.Mark.Line, Column: le.Mark.Column, Msg: le.Message}
	if le.Mark.Index >= len(data) {
		e.Msg += " at the end of the file"
	}
	if c := le.ContextMark; le.ContextMsg != "" && c.Line > 0 && (c.Line != le.Mark.Line || c.Column != le.Mark.Column) {
		e.Msg += fmt.Sprintf(" (%s that begins at %d:%d)", le.ContextMsg, c.Line, c.Column)
	}
	if at(data, e.Line, e.Column) == '\t' {
		e.Msg += "; YAML is indented with spaces, not tabs"
	}
	return e
}

// at gives the character at line and column (both from 1, the column in
// characters), or utf8.RuneError. Lines end in "\n", "\r\n" or "\r".
func at(data []byte, line, column int) rune {
	for l := 1; l < line; l++ {
		i := bytes.IndexAny(data, "\r\n")
		if i < 0 {
			return utf8.RuneError
		}
		if data[i] == '\r' && i+1 < len(data) && data[i+1] == '\n' {
			i++
		}
		data = data[i+1:]
	}
	for c := 1; len(data) > 0; c++ {
		r, size := utf8.DecodeRune(data)
		if c == column {
			return r
		}
		if r == '\n' || r == '\r' {
			break
		}
		data = data[size:]
	}
	return utf8.RuneError
}
