// Package termsafe escapes text that workloads chose (server names,
// command lines, cgroup paths, pod names) before it is shown to a person.
// Written raw, such text could drive the terminal that shows it (ESC
// clears the screen or sets the window title; C1 controls do the same on
// terminals that read them), forge lines of output (a line feed), or make
// a line read otherwise than it is (Unicode bidirectional overrides and
// isolates reorder it, zero-width characters hide what is there).
//
// What is escaped: the C0 controls (U+0000–U+001F), DEL, the C1 controls
// (U+0080–U+009F), bytes that are not UTF-8, and every other character
// that Go's strconv.IsPrint does not call printable: the format
// characters (bidi controls U+202A–U+202E and U+2066–U+2069, U+200B–U+200F,
// U+2060–U+2064, U+FEFF, soft hyphen, tag characters), spaces other than
// U+0020, line and paragraph separators, private-use and unassigned code
// points. They are written as Go writes them in quoted strings (\x1b,
// \n, \u009b, \u202e, \U000e0001, and \xff for a byte that is not UTF-8),
// so that the person sees that something odd was there and what.
package termsafe

import (
	"strconv"
	"unicode/utf8"
)

const hexDigits = "0123456789abcdef"

// plain reports whether r stands for itself on a terminal.
func plain(r rune) bool {
	if r < utf8.RuneSelf {
		return r >= 0x20 && r != 0x7f
	}
	return strconv.IsPrint(r)
}

// Append appends s to dst with every character that is not plain
// escaped, and the backslash written as \\, so that an escape in the
// output always stands for an odd character of s and never for text that
// merely looks like one. It is for a field of a line: nothing of s can
// end the line or act on the terminal.
func Append(dst []byte, s string) []byte {
	return appendEscaped(dst, s, modeField)
}

// String returns s escaped as Append does; s itself when nothing in it
// needs escaping.
func String(s string) string {
	return escape(s, modeField)
}

// Line returns s escaped for a line of text, such as an error message,
// that may quote values with Go's %q already: every character that is not
// plain is escaped, line feeds too, but backslashes are left as they are.
func Line(s string) string {
	return escape(s, modeLine)
}

// Message returns s escaped as Line does but for line feeds and tabs: it
// is for a message meant to be read over several lines, such as a BPF
// verifier's log.
func Message(s string) string {
	return escape(s, modeMessage)
}

type mode uint8

const (
	modeField   mode = iota // the backslash is escaped too
	modeLine                // the backslash is left alone
	modeMessage             // and line feeds and tabs are kept
)

// keep reports whether the ASCII byte b stands for itself in mode m.
func (m mode) keep(b byte) bool {
	switch {
	case b == '\\':
		return m != modeField
	case b == '\n', b == '\t':
		return m == modeMessage
	}
	return plain(rune(b))
}

// escape returns s escaped in mode m; s itself when nothing needs it.
func escape(s string, m mode) string {
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			if !m.keep(b) {
				return string(appendEscaped(make([]byte, 0, len(s)+16), s, m))
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 || !plain(r) {
			return string(appendEscaped(make([]byte, 0, len(s)+16), s, m))
		}
		i += size
	}
	return s
}

func appendEscaped(dst []byte, s string, m mode) []byte {
	for i := 0; i < len(s); {
		b := s[i]
		if b < utf8.RuneSelf {
			switch {
			case m.keep(b):
				dst = append(dst, b)
			case b == '\\':
				dst = append(dst, '\\', '\\')
			default:
				dst = appendASCIIEscape(dst, b)
			}
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, '\\', 'x', hexDigits[b>>4], hexDigits[b&0xf])
		case plain(r):
			dst = append(dst, s[i:i+size]...)
		default:
			dst = appendRuneEscape(dst, r)
		}
		i += size
	}
	return dst
}

// appendASCIIEscape writes a control byte as strconv.Quote does.
func appendASCIIEscape(dst []byte, b byte) []byte {
	switch b {
	case '\a':
		return append(dst, '\\', 'a')
	case '\b':
		return append(dst, '\\', 'b')
	case '\f':
		return append(dst, '\\', 'f')
	case '\n':
		return append(dst, '\\', 'n')
	case '\r':
		return append(dst, '\\', 'r')
	case '\t':
		return append(dst, '\\', 't')
	case '\v':
		return append(dst, '\\', 'v')
	}
	return append(dst, '\\', 'x', hexDigits[b>>4], hexDigits[b&0xf])
}

// appendRuneEscape writes r as \uXXXX, or \UXXXXXXXX beyond the BMP.
func appendRuneEscape(dst []byte, r rune) []byte {
	n := 4
	dst = append(dst, '\\', 'u')
	if r > 0xffff {
		n = 8
		dst[len(dst)-1] = 'U'
	}
	for shift := (n - 1) * 4; shift >= 0; shift -= 4 {
		dst = append(dst, hexDigits[r>>uint(shift)&0xf])
	}
	return dst
}

// AppendJSON appends the JSON text src to dst with the characters that
// are not plain, which encoding/json leaves raw in strings (DEL, the C1
// controls, format characters such as U+202E), written as \u escapes
// (surrogate pairs beyond the BMP), and bytes that are not UTF-8 as
// \ufffd, as encoding/json decodes them. The JSON means what it meant:
// outside strings, JSON text is ASCII, so only string contents change,
// and only in how they are written. Raw ASCII controls are escaped too,
// though valid JSON has them only as white space (and a line feed that
// ends src is kept), so that nothing in the output acts on a terminal
// even if src is not valid JSON.
func AppendJSON(dst, src []byte) []byte {
	for i := 0; i < len(src); {
		b := src[i]
		if b < utf8.RuneSelf {
			if plain(rune(b)) || b == '\n' && i == len(src)-1 {
				dst = append(dst, b)
			} else {
				dst = appendJSONEscape(dst, rune(b))
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(src[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, `\ufffd`...)
		case plain(r):
			dst = append(dst, src[i:i+size]...)
		default:
			dst = appendJSONEscape(dst, r)
		}
		i += size
	}
	return dst
}

func appendJSONEscape(dst []byte, r rune) []byte {
	if r > 0xffff {
		r -= 0x10000
		dst = appendJSONEscape(dst, 0xd800+r>>10)
		return appendJSONEscape(dst, 0xdc00+r&0x3ff)
	}
	return append(dst, '\\', 'u', hexDigits[r>>12], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
}
