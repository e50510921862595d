package tlshello

import (
	"errors"
	"fmt"

	"golang.org/x/crypto/cryptobyte"
)

const (
	recordTypeHandshake = 0x16
	recordHeaderLen     = 5
	handshakeHeaderLen  = 4
	// maxPlaintext is the largest record a peer may send before keys are
	// agreed (RFC 8446, section 5.1).
	maxPlaintext = 1 << 14
)

// errCut says the capture ended before the field did. It never leaves the
// package: a cut hello is reported as Truncated.
var errCut = errors.New("cut short")

// readHandshake joins the fragments of the first handshake message in b,
// which starts at a record header, and checks that it is of type want.
// The message may span records; the capture may end anywhere. It returns
// the message body as far as it was captured, in a cursor that knows the
// length the message declares.
//
// The common case, a hello in one record, is not copied. Otherwise the
// fragments are copied into one buffer no larger than b.
func readHandshake(b []byte, want uint8) (cursor, error) {
	if len(b) == 0 {
		return cursor{}, fmt.Errorf("record: %w", ErrShort)
	}
	if b[0] != recordTypeHandshake || (len(b) > 1 && b[1] != 3) {
		return cursor{}, ErrNotHandshake
	}
	if len(b) < recordHeaderLen {
		return cursor{}, fmt.Errorf("record: %w", ErrShort)
	}

	var msg []byte
	rest := cryptobyte.String(b)
	for first := true; ; first = false {
		if len(rest) < recordHeaderLen {
			// The capture ends at or inside a record header.
			if len(rest) > 0 && rest[0] != recordTypeHandshake {
				return cursor{}, fmt.Errorf("record: content type %d inside a handshake message: %w", rest[0], ErrMalformed)
			}
			break
		}
		var (
			typ      uint8
			ver, n   uint16
			fragment []byte
		)
		rest.ReadUint8(&typ)
		rest.ReadUint16(&ver)
		rest.ReadUint16(&n)
		switch {
		case typ != recordTypeHandshake || ver>>8 != 3:
			// The first record was checked above: this one interrupts
			// a message that the earlier records left unfinished.
			return cursor{}, fmt.Errorf("record: content type %d version 0x%04x inside a handshake message: %w", typ, ver, ErrMalformed)
		case n == 0 || n > maxPlaintext:
			return cursor{}, fmt.Errorf("record: length %d: %w", n, ErrMalformed)
		}
		if !rest.ReadBytes(&fragment, int(n)) {
			fragment, rest = rest, nil // the capture ends inside this record
		}

		if first {
			if len(fragment) > 0 && fragment[0] != want {
				// Known before anything is copied.
				return cursor{}, fmt.Errorf("handshake type %d: %w", fragment[0], ErrUnexpectedMessage)
			}
			if total, ok := messageLen(fragment); ok && total <= len(fragment) {
				msg = fragment[:total]
				break
			}
			// The message goes on past this record, or past the capture.
			msg = make([]byte, 0, len(b)-recordHeaderLen)
		}
		msg = append(msg, fragment...)
		if len(fragment) < int(n) {
			break // the capture ends inside this record
		}
		if total, ok := messageLen(msg); ok && total <= len(msg) {
			msg = msg[:total]
			break
		}
	}

	total, ok := messageLen(msg)
	if !ok {
		return cursor{}, fmt.Errorf("handshake header: %w", ErrShort)
	}
	return cursor{s: cryptobyte.String(msg[handshakeHeaderLen:]), left: total - handshakeHeaderLen}, nil
}

// messageLen returns the length of the handshake message that starts m,
// header included, once its header is in.
func messageLen(m []byte) (int, bool) {
	if len(m) < handshakeHeaderLen {
		return 0, false
	}
	return handshakeHeaderLen + (int(m[1])<<16 | int(m[2])<<8 | int(m[3])), true
}

// cursor reads a structure whose declared size may exceed what was
// captured of it. Reads past the declared size are malformed; reads past
// the capture are cut (errCut).
type cursor struct {
	s    cryptobyte.String // captured bytes not yet read
	left int               // declared bytes not yet read; never less than len(s)
}

// cut reports whether the capture ends before the structure does.
func (c *cursor) cut() bool { return len(c.s) < c.left }

func (c *cursor) need(n int) error {
	if n > c.left {
		return ErrMalformed
	}
	if n > len(c.s) {
		return errCut
	}
	return nil
}

func (c *cursor) uint8() (uint8, error) {
	if err := c.need(1); err != nil {
		return 0, err
	}
	var v uint8
	c.s.ReadUint8(&v)
	c.left--
	return v, nil
}

func (c *cursor) uint16() (uint16, error) {
	if err := c.need(2); err != nil {
		return 0, err
	}
	var v uint16
	c.s.ReadUint16(&v)
	c.left -= 2
	return v, nil
}

func (c *cursor) skip(n int) error {
	if err := c.need(n); err != nil {
		return err
	}
	c.s.Skip(n)
	c.left -= n
	return nil
}

// vector reads a vector with a length prefix of prefixLen bytes (1 or 2).
// Its contents may be cut short, which the returned cursor tells; the
// parent then has nothing more captured.
func (c *cursor) vector(prefixLen int) (cursor, error) {
	var n int
	if prefixLen == 1 {
		v, err := c.uint8()
		if err != nil {
			return cursor{}, err
		}
		n = int(v)
	} else {
		v, err := c.uint16()
		if err != nil {
			return cursor{}, err
		}
		n = int(v)
	}
	if n > c.left {
		return cursor{}, ErrMalformed
	}
	got := min(n, len(c.s))
	v := cursor{s: c.s[:got], left: n}
	c.s = c.s[got:]
	c.left -= n
	return v, nil
}
