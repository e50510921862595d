package termsafe

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"unicode/utf8"
)

// hostile holds what a workload could put in a name to act on a terminal
// or mislead whoever reads the line.
var hostile = []struct{ in, want string }{
	{"api.stripe.com", "api.stripe.com"},
	{"\x1b[2J\x1b[H", `\x1b[2J\x1b[H`},
	{"\x1b]0;owned\a", `\x1b]0;owned\a`},
	{"a\nb\r\tc\x00\x7f", `a\nb\r\tc\x00\x7f`},
	{"\u009b2J\u0085", `\u009b2J\u0085`},
	{"evil\u202egnp.exe", `evil\u202egnp.exe`},
	{"\u2066a\u2069\u200b\ufeff\u00ad", `\u2066a\u2069\u200b\ufeff\u00ad`},
	{"\u2028\u00a0\U000e0041", `\u2028\u00a0\U000e0041`},
	{"bad\xff\xc3(", `bad\xff\xc3(`},
	{`C:\x1b`, `C:\\x1b`}, // text that looks like an escape does not pass for one
	{"naïve 名前 ✓ \ufffd", "naïve 名前 ✓ \ufffd"},
}

// rawControls reports the first byte sequence in b that could act on a
// terminal: a C0 control but allowed, DEL, a C1 control or a format
// character in UTF-8, or a byte that is not UTF-8.
func rawControls(b []byte, allowed string) (string, bool) {
	for i := 0; i < len(b); {
		r, size := utf8.DecodeRune(b[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			return strconv.Quote(string(b[i : i+1])), true
		case r < 0x20 && !strings.ContainsRune(allowed, r), r == 0x7f, r >= 0x80 && !strconv.IsPrint(r):
			return strconv.QuoteRune(r), true
		}
		i += size
	}
	return "", false
}

func TestString(t *testing.T) {
	for _, h := range hostile {
		got := String(h.in)
		if got != h.want {
			t.Errorf("String(%q) = %q, want %q", h.in, got, h.want)
		}
		if c, ok := rawControls([]byte(got), ""); ok {
			t.Errorf("String(%q) holds %s raw", h.in, c)
		}
		if got := string(Append([]byte("x"), h.in)); got != "x"+h.want {
			t.Errorf("Append(%q) = %q", h.in, got)
		}
	}
}

// The escapes are Go's: inside quotes, strconv.Unquote gives the input back.
func TestStringUnquotes(t *testing.T) {
	for _, h := range hostile {
		got, err := strconv.Unquote(`"` + strings.ReplaceAll(String(h.in), `"`, `\"`) + `"`)
		if err != nil || got != h.in {
			t.Errorf("unquoting String(%q): %q, %v", h.in, got, err)
		}
	}
}

func TestStringKeepsCleanString(t *testing.T) {
	s := "spiffe://cluster.local/ns/payments/sa/billing"
	if n := testing.AllocsPerRun(100, func() { _ = String(s) }); n != 0 {
		t.Errorf("String of a clean string allocates %v times", n)
	}
}

func TestLine(t *testing.T) {
	in := "json: invalid character '\\x1b' in \"a\\\"b\"\n\x1b[2J\t\u202e"
	want := `json: invalid character '\x1b' in "a\"b"\n\x1b[2J\t\u202e`
	if got := Line(in); got != want {
		t.Errorf("Line = %q, want %q", got, want)
	}
}

func TestMessage(t *testing.T) {
	in := "load BPF programs: permission denied:\n\t0: (b7) r0 = 0\n\x1b[2J \u202e %q of \"a\\x1b\""
	want := "load BPF programs: permission denied:\n\t0: (b7) r0 = 0\n\\x1b[2J \\u202e %q of \"a\\x1b\""
	if got := Message(in); got != want {
		t.Errorf("Message = %q, want %q", got, want)
	}
	if c, ok := rawControls([]byte(Message(in)), "\n\t"); ok {
		t.Errorf("Message holds %s raw", c)
	}
	if s := "one line"; Message(s) != s {
		t.Errorf("Message(%q) = %q", s, Message(s))
	}
}

func TestAppendJSON(t *testing.T) {
	for _, h := range hostile {
		src, err := json.Marshal(map[string]string{"name": h.in})
		if err != nil {
			t.Fatal(err)
		}
		src = append(src, '\n')
		got := AppendJSON(nil, src)
		if c, ok := rawControls(got[:len(got)-1], ""); ok {
			t.Errorf("%q: %s raw in %s", h.in, c, got)
		}
		if !bytes.HasSuffix(got, []byte("\n")) || bytes.Count(got, []byte("\n")) != 1 {
			t.Errorf("%q: not one line: %q", h.in, got)
		}
		// The same value, as encoding/json decodes it.
		var was, is map[string]string
		if err := json.Unmarshal(src, &was); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(got, &is); err != nil {
			t.Fatalf("%q: %s: %v", h.in, got, err)
		}
		if is["name"] != was["name"] {
			t.Errorf("%q: decodes to %q, want %q", h.in, is["name"], was["name"])
		}
	}
	// Not from encoding/json: raw bytes that are not UTF-8, and raw
	// controls where valid JSON would have none.
	got := AppendJSON(nil, []byte("{\"a\":\"\xff\u202e\U000e0041\"}\x1b[2J\n"))
	if want := `{"a":"\ufffd\u202e\udb40\udc41"}\u001b[2J` + "\n"; string(got) != want {
		t.Errorf("AppendJSON = %s, want %s", got, want)
	}
	var v map[string]string
	if err := json.Unmarshal(got[:bytes.IndexByte(got, '}')+1], &v); err != nil || v["a"] != "\ufffd\u202e\U000e0041" {
		t.Errorf("decoded %q, %v", v, err)
	}
}

func FuzzString(f *testing.F) {
	for _, h := range hostile {
		f.Add(h.in)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if c, ok := rawControls([]byte(String(s)), ""); ok {
			t.Fatalf("String(%q) holds %s raw", s, c)
		}
		if c, ok := rawControls([]byte(Line(s)), ""); ok {
			t.Fatalf("Line(%q) holds %s raw", s, c)
		}
		if c, ok := rawControls([]byte(Message(s)), "\n\t"); ok {
			t.Fatalf("Message(%q) holds %s raw", s, c)
		}
		j := AppendJSON(nil, []byte(s))
		if c, ok := rawControls(bytes.TrimSuffix(j, []byte("\n")), ""); ok {
			t.Fatalf("AppendJSON(%q) holds %s raw", s, c)
		}
		got, err := strconv.Unquote(`"` + strings.ReplaceAll(String(s), `"`, `\"`) + `"`)
		if err != nil || got != s {
			t.Fatalf("unquoting String(%q): %q, %v", s, got, err)
		}
	})
}
