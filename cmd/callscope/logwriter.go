package main

import (
	"io"
	"sync"

	"github.com/callscope/callscope/internal/termsafe"
)

// safeLogWriter escapes, in the lines slog's handlers write, what those
// leave raw of the values they log, many of which workloads chose (pod
// names, cgroup paths, broker errors quoting them). The text handler
// quotes and escapes every control character in messages, keys and values
// but DEL. The JSON handler escapes the C0 controls, but leaves DEL, the
// C1 controls and format characters such as U+202E raw, as JSON allows:
// they become \u escapes, which decode to the same strings.
type safeLogWriter struct {
	w    io.Writer
	json bool
	mu   sync.Mutex
	buf  []byte
}

// Write takes one record, as slog's handlers write them: a whole line per
// call.
func (s *safeLogWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.json {
		s.buf = termsafe.AppendJSON(s.buf[:0], p)
	} else {
		// The line feed that ends the record is kept; the handler has
		// escaped any other.
		s.buf = append(s.buf[:0], termsafe.Message(string(p))...)
	}
	if _, err := s.w.Write(s.buf); err != nil {
		return 0, err
	}
	return len(p), nil
}
