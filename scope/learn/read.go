package learn

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"math/bits"
	"net/netip"
	"time"
	"unicode/utf16"
	"unicode/utf8"
	"unsafe"
)

// Schema is the event schema read.
const Schema = "callscope/v1"

// MaxLine is the longest line read; a longer one is skipped and counted.
// The agent's events are a few hundred bytes; a cmdline is cut at 1 KiB.
const MaxLine = 1 << 20

// maxDepth bounds the nesting of a line's JSON, as encoding/json does.
const maxDepth = 10000

// Kind is an event's kind, as far as learning cares.
type Kind uint8

const (
	KindOther   Kind = iota // any kind that is not a call or a loss (dns, accept, …)
	KindConnect             // an outbound connect, with its outcome
	KindTLS                 // a ClientHello on a connection
	KindVerdict             // closes a pending verdict: a copy of its connect
	KindLoss                // events were lost upstream
)

// Event is what learning reads of one event line. Its strings point into
// the line read: they are valid only during the call that is given the
// Event, and must be copied to be kept.
type Event struct {
	Kind Kind
	Time int64  // Unix nanoseconds; 0 when absent
	Conn uint64 // the socket cookie; 0 when absent or not hex
	Dst  netip.AddrPort
	// DstName and NameSource are dst.name and dst.name_source.
	DstName, NameSource string
	// CalleeNamespace and CalleeService are dst.k8s: what the cluster
	// says of the destination.
	CalleeNamespace, CalleeService string
	SNI                            string // tls.sni
	Outcome                        string
	Exe                            string // process.exe
	// Namespace and ServiceAccount are the caller pod's (k8s).
	Namespace, ServiceAccount string
	Identity                  string
	// For KindLoss.
	LossStage, LossReason string
	LossCount             uint64
}

// Skip says why a line taught nothing.
type Skip uint8

const (
	SkipNone          Skip = iota
	SkipBlank              // an empty line
	SkipMalformed          // not a JSON object, or a known field of the wrong type
	SkipTooLong            // longer than MaxLine
	SkipUnknownSchema      // schema is not callscope/v1
	SkipOutsideWindow      // event time outside --since/--until
	SkipOtherKind          // not a call nor a loss (dns, accept, …)
	SkipIncomplete         // a call without its time or destination address
	SkipNoIdentity         // a call with no fact naming its caller
	SkipOverCap            // a new (identity, destination) pair past the cap
	numSkips
)

var skipNames = [numSkips]string{
	SkipBlank:         "blank line",
	SkipMalformed:     "malformed JSON",
	SkipTooLong:       "line too long",
	SkipUnknownSchema: "unknown schema",
	SkipOutsideWindow: "outside window",
	SkipOtherKind:     "not a call",
	SkipIncomplete:    "no time or destination",
	SkipNoIdentity:    "no identity",
	SkipOverCap:       "past --max-pairs",
}

func (s Skip) String() string {
	if s < numSkips && skipNames[s] != "" {
		return skipNames[s]
	}
	return "none"
}

// ReadEvents reads JSON lines from r and calls fn with each event that
// parses, and skip with the reason of each line that does not (the line is
// nil for SkipTooLong). Lines may end in "\n" or "\r\n"; the last needs
// no newline. It returns r's error, never io.EOF.
func ReadEvents(r io.Reader, fn func(*Event), skip func(Skip, []byte)) error {
	br := bufio.NewReaderSize(r, 256<<10)
	var long []byte // a line that did not fit the buffer
	var ev Event
	var d decoder
	for {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			if len(long)+len(line) > MaxLine {
				skip(SkipTooLong, nil)
				long = long[:0]
				if err := discardLine(br); err != nil {
					return noEOF(err)
				}
				continue
			}
			long = append(long, line...)
			continue
		}
		if len(long) > 0 {
			long = append(long, line...)
			line = long
		}
		if len(line) > 0 {
			body := bytes.TrimSuffix(bytes.TrimSuffix(line, []byte{'\n'}), []byte{'\r'})
			if len(body) > MaxLine {
				skip(SkipTooLong, nil)
			} else if s := d.decode(body, &ev); s != SkipNone {
				skip(s, body)
			} else {
				fn(&ev)
			}
		}
		long = long[:0]
		if err != nil {
			return noEOF(err)
		}
	}
}

// isBlank says line holds nothing but JSON's white space.
func isBlank(line []byte) bool {
	for _, c := range line {
		if c != ' ' && c != '\t' && c != '\r' && c != '\n' {
			return false
		}
	}
	return true
}

func discardLine(br *bufio.Reader) error {
	for {
		_, err := br.ReadSlice('\n')
		if !errors.Is(err, bufio.ErrBufferFull) {
			return err
		}
	}
}

func noEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return nil
	}
	return err
}

// DecodeLine decodes one line (without its newline) into ev.
func DecodeLine(line []byte, ev *Event) Skip {
	var d decoder
	return d.decode(line, ev)
}

// decoder reads the few fields learning needs from a line, checking that
// the whole line is JSON as it goes: a hand-written scanner, since
// encoding/json's reflection costs several times the budget of an event.
type decoder struct {
	b       []byte
	i       int
	bad     bool
	depth   int
	scratch [][]byte // unescaped strings, reused
	nstr    int
	schema  string
	kind    string
	time    string
	conn    string
	dstIP   string
	dstPort int64
}

func (d *decoder) decode(line []byte, ev *Event) Skip {
	if isBlank(line) {
		return SkipBlank
	}
	*ev = Event{}
	d.b, d.i, d.bad, d.depth, d.nstr = line, 0, false, 0, 0
	d.schema, d.kind, d.time, d.conn, d.dstIP, d.dstPort = "", "", "", "", "", -1
	d.ws()
	if !d.object(ev, setTop) {
		return SkipMalformed
	}
	d.ws()
	if d.bad || d.i != len(d.b) {
		return SkipMalformed
	}
	if d.schema != Schema {
		return SkipUnknownSchema
	}
	switch d.kind {
	case "connect":
		ev.Kind = KindConnect
	case "tls":
		ev.Kind = KindTLS
	case "verdict":
		ev.Kind = KindVerdict
	case "loss":
		ev.Kind = KindLoss
	default:
		ev.Kind = KindOther
	}
	if d.time != "" {
		t, ok := parseTime(d.time)
		if !ok {
			return SkipMalformed
		}
		ev.Time = t
	}
	ev.Conn = parseHex(d.conn)
	if d.dstIP != "" {
		a, err := netip.ParseAddr(d.dstIP)
		if err != nil || a.Zone() != "" {
			return SkipMalformed
		}
		port := d.dstPort
		if port < 0 {
			port = 0
		}
		ev.Dst = netip.AddrPortFrom(a.Unmap(), uint16(port))
	}
	return SkipNone
}

// objSet says which object is being read, and so which of its members
// are kept.
type objSet uint8

const (
	setSkip objSet = iota
	setTop
	setDst
	setCallee
	setTLS
	setProcess
	setK8s
	setLoss
)

// field reads the value of the member key of an object of set.
func (d *decoder) field(ev *Event, set objSet, key []byte) bool {
	switch set {
	case setTop:
		return d.top(ev, key)
	case setDst:
		return d.dst(ev, key)
	case setCallee:
		return d.callee(ev, key)
	case setTLS:
		return d.tls(ev, key)
	case setProcess:
		return d.process(ev, key)
	case setK8s:
		return d.k8s(ev, key)
	case setLoss:
		return d.loss(ev, key)
	}
	return d.skip()
}

func (d *decoder) top(ev *Event, key []byte) bool {
	switch string(key) {
	case "schema":
		return d.strInto(&d.schema)
	case "kind":
		return d.strInto(&d.kind)
	case "time":
		return d.strInto(&d.time)
	case "conn":
		return d.strInto(&d.conn)
	case "outcome":
		return d.strInto(&ev.Outcome)
	case "identity":
		return d.strInto(&ev.Identity)
	case "dst":
		return d.object(ev, setDst)
	case "tls":
		return d.object(ev, setTLS)
	case "process":
		return d.object(ev, setProcess)
	case "k8s":
		return d.object(ev, setK8s)
	case "loss":
		return d.object(ev, setLoss)
	}
	return d.skip()
}

func (d *decoder) dst(ev *Event, key []byte) bool {
	switch string(key) {
	case "ip":
		return d.strInto(&d.dstIP)
	case "port":
		n, ok := d.uint(65535)
		if ok {
			d.dstPort = int64(n)
		}
		return ok
	case "name":
		return d.strInto(&ev.DstName)
	case "name_source":
		return d.strInto(&ev.NameSource)
	case "k8s":
		return d.object(ev, setCallee)
	}
	return d.skip()
}

func (d *decoder) callee(ev *Event, key []byte) bool {
	switch string(key) {
	case "namespace":
		return d.strInto(&ev.CalleeNamespace)
	case "service":
		return d.strInto(&ev.CalleeService)
	}
	return d.skip()
}

func (d *decoder) tls(ev *Event, key []byte) bool {
	if string(key) == "sni" {
		return d.strInto(&ev.SNI)
	}
	return d.skip()
}

func (d *decoder) process(ev *Event, key []byte) bool {
	if string(key) == "exe" {
		return d.strInto(&ev.Exe)
	}
	return d.skip()
}

func (d *decoder) k8s(ev *Event, key []byte) bool {
	switch string(key) {
	case "namespace":
		return d.strInto(&ev.Namespace)
	case "service_account":
		return d.strInto(&ev.ServiceAccount)
	}
	return d.skip()
}

func (d *decoder) loss(ev *Event, key []byte) bool {
	switch string(key) {
	case "stage":
		return d.strInto(&ev.LossStage)
	case "reason":
		return d.strInto(&ev.LossReason)
	case "count":
		n, ok := d.uint(1<<64 - 1)
		if ok {
			ev.LossCount = n
		}
		return ok
	}
	return d.skip()
}

// ws skips white space; the agent writes none, so the first test is
// inlined and mostly all there is.
func (d *decoder) ws() {
	if d.i < len(d.b) && d.b[d.i] <= ' ' {
		d.wsSlow()
	}
}

func (d *decoder) wsSlow() {
	for d.i < len(d.b) {
		switch d.b[d.i] {
		case ' ', '\t', '\n', '\r':
			d.i++
		default:
			return
		}
	}
}

// null consumes a null, which stands for an absent member.
func (d *decoder) null() bool {
	b, i := d.b, d.i
	if i+4 <= len(b) && b[i] == 'n' && b[i+1] == 'u' && b[i+2] == 'l' && b[i+3] == 'l' {
		d.i += 4
		return true
	}
	return false
}

// object reads an object (or null), giving each member's key to field,
// which reads the value. A key given twice is read twice: the last wins.
func (d *decoder) object(ev *Event, set objSet) bool {
	if d.null() {
		return true
	}
	if d.i >= len(d.b) || d.b[d.i] != '{' {
		return false
	}
	if d.depth++; d.depth > maxDepth {
		return false
	}
	d.i++
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == '}' {
		d.i++
		d.depth--
		return true
	}
	for {
		d.ws()
		key, ok := d.str()
		if !ok {
			return false
		}
		d.ws()
		if d.i >= len(d.b) || d.b[d.i] != ':' {
			return false
		}
		d.i++
		d.ws()
		if !d.field(ev, set, key) {
			return false
		}
		d.ws()
		if d.i >= len(d.b) {
			return false
		}
		switch d.b[d.i] {
		case ',':
			d.i++
		case '}':
			d.i++
			d.depth--
			return true
		default:
			return false
		}
	}
}

// strInto reads a string (or null, which leaves dst alone) into dst, as a
// view of the line or of scratch.
func (d *decoder) strInto(dst *string) bool {
	if d.null() {
		return true
	}
	s, ok := d.str()
	if ok {
		*dst = unsafe.String(unsafe.SliceData(s), len(s))
	}
	return ok
}

// strClass marks the bytes that end a run of plain string bytes: the
// closing quote, an escape, and the control characters JSON forbids.
var strClass = func() (c [256]bool) {
	for i := range 0x20 {
		c[i] = true
	}
	c['"'], c['\\'] = true, true
	return c
}()

// plainRun gives the index of the first byte from i on that ends a run
// of plain string bytes (see strClass), or len(b): eight bytes at a time.
func plainRun(b []byte, i int) int {
	for i+8 <= len(b) {
		if m := specials(binary.LittleEndian.Uint64(b[i:])); m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
		i += 8
	}
	for i < len(b) && !strClass[b[i]] {
		i++
	}
	return i
}

// specials marks, in the high bit of each byte of w, the bytes that end
// a run of plain string bytes (see strClass). A borrow can mark a byte
// above a marked one, never below, so the lowest mark is exact.
func specials(w uint64) uint64 {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	q, bs := w^(ones*'"'), w^(ones*'\\')
	return (((q - ones) &^ q) | ((bs - ones) &^ bs) | ((w - ones*0x20) &^ w)) & highs
}

// str reads a string, unescaped. Most are keys and short values: their
// first eight bytes are tested here, without a call.
func (d *decoder) str() ([]byte, bool) {
	b, i := d.b, d.i
	if i >= len(b) || b[i] != '"' {
		return nil, false
	}
	i++
	start := i
	if i+8 <= len(b) {
		if m := specials(binary.LittleEndian.Uint64(b[i:])); m != 0 {
			i += bits.TrailingZeros64(m) / 8
		} else {
			i = plainRun(b, i+8)
		}
	} else {
		i = plainRun(b, i)
	}
	if i < len(b) && b[i] == '"' {
		d.i = i + 1
		return b[start:i], true
	}
	d.i = i
	return d.escaped(start)
}

// escaped reads the rest of a string with escapes into a scratch buffer.
func (d *decoder) escaped(start int) ([]byte, bool) {
	if d.nstr == len(d.scratch) {
		d.scratch = append(d.scratch, nil)
	}
	out := append(d.scratch[d.nstr][:0], d.b[start:d.i]...)
	b := d.b
	i := d.i
	for {
		j := plainRun(b, i)
		out = append(out, b[i:j]...)
		i = j
		if i >= len(b) || b[i] < 0x20 {
			return nil, false
		}
		if b[i] == '"' {
			d.i = i + 1
			// Each unescaped string keeps its buffer until the next line:
			// the Event may point into it.
			d.scratch[d.nstr] = out
			d.nstr++
			return out, true
		}
		// An escape.
		if i+1 >= len(b) {
			return nil, false
		}
		switch c := b[i+1]; c {
		case '"', '\\', '/':
			out = append(out, c)
			i += 2
		case 'b':
			out, i = append(out, '\b'), i+2
		case 'f':
			out, i = append(out, '\f'), i+2
		case 'n':
			out, i = append(out, '\n'), i+2
		case 'r':
			out, i = append(out, '\r'), i+2
		case 't':
			out, i = append(out, '\t'), i+2
		case 'u':
			r, ok := hex4(b, i+2)
			if !ok {
				return nil, false
			}
			i += 6
			if utf16.IsSurrogate(r) {
				r2, ok2 := rune(-1), false
				if i+1 < len(b) && b[i] == '\\' && b[i+1] == 'u' {
					r2, ok2 = hex4(b, i+2)
				}
				if dec := utf16.DecodeRune(r, r2); ok2 && dec != utf8.RuneError {
					r = dec
					i += 6
				} else {
					r = utf8.RuneError
				}
			}
			out = utf8.AppendRune(out, r)
		default:
			return nil, false
		}
	}
}

// parseHex reads a socket cookie: up to 16 hex digits; 0 for anything else.
func parseHex(s string) uint64 {
	if len(s) == 0 || len(s) > 16 {
		return 0
	}
	var n uint64
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0
		}
		n = n<<4 | uint64(c)
	}
	return n
}

func hex4(b []byte, i int) (rune, bool) {
	if i+4 > len(b) {
		return 0, false
	}
	var r rune
	for _, c := range b[i : i+4] {
		switch {
		case c >= '0' && c <= '9':
			r = r<<4 | rune(c-'0')
		case c >= 'a' && c <= 'f':
			r = r<<4 | rune(c-'a'+10)
		case c >= 'A' && c <= 'F':
			r = r<<4 | rune(c-'A'+10)
		default:
			return 0, false
		}
	}
	return r, true
}

// uint reads a JSON number that must be a whole number from 0 to limit.
func (d *decoder) uint(limit uint64) (uint64, bool) {
	if d.null() {
		return 0, true
	}
	start := d.i
	if !d.number() {
		return 0, false
	}
	var n uint64
	for _, c := range d.b[start:d.i] {
		if c < '0' || c > '9' {
			return 0, false // a sign, a fraction or an exponent
		}
		if n > (limit-uint64(c-'0'))/10 {
			return 0, false
		}
		n = n*10 + uint64(c-'0')
	}
	return n, true
}

// number checks the grammar of a JSON number.
func (d *decoder) number() bool {
	b, i := d.b, d.i
	if i < len(b) && b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		j := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == j {
			return false
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		j := i
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
		if i == j {
			return false
		}
	}
	d.i = i
	return true
}

// skip reads any value.
func (d *decoder) skip() bool {
	if d.i >= len(d.b) {
		return false
	}
	switch c := d.b[d.i]; {
	case c == '"':
		return d.skipString()
	case c == '{':
		return d.object(nil, setSkip)
	case c == '[':
		return d.array()
	case c == 't':
		return d.literal("true")
	case c == 'f':
		return d.literal("false")
	case c == 'n':
		return d.literal("null")
	case c == '-' || c >= '0' && c <= '9':
		return d.number()
	}
	return false
}

// skipString reads a string without keeping it, checking its escapes.
func (d *decoder) skipString() bool {
	b := d.b
	i := d.i + 1
	for {
		i = plainRun(b, i)
		if i >= len(b) || b[i] < 0x20 {
			return false
		}
		if b[i] == '"' {
			d.i = i + 1
			return true
		}
		if i+1 >= len(b) {
			return false
		}
		switch b[i+1] {
		case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			i += 2
		case 'u':
			if _, ok := hex4(b, i+2); !ok {
				return false
			}
			i += 6
		default:
			return false
		}
	}
}

func (d *decoder) literal(word string) bool {
	if !bytes.HasPrefix(d.b[d.i:], []byte(word)) {
		return false
	}
	d.i += len(word)
	return true
}

func (d *decoder) array() bool {
	if d.depth++; d.depth > maxDepth {
		return false
	}
	d.i++
	d.ws()
	if d.i < len(d.b) && d.b[d.i] == ']' {
		d.i++
		d.depth--
		return true
	}
	for {
		d.ws()
		if !d.skip() {
			return false
		}
		d.ws()
		if d.i >= len(d.b) {
			return false
		}
		switch d.b[d.i] {
		case ',':
			d.i++
		case ']':
			d.i++
			d.depth--
			return true
		default:
			return false
		}
	}
}

// parseTime reads an RFC 3339 time: the agent's form, UTC with up to nine
// fraction digits, without time.Parse; any other through it.
func parseTime(s string) (int64, bool) {
	if n, ok := parseUTC(s); ok {
		return n, true
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return 0, false
	}
	return t.UnixNano(), true
}

// parseUTC reads "2006-01-02T15:04:05[.fraction]Z".
func parseUTC(s string) (int64, bool) {
	if len(s) < 20 || s[len(s)-1] != 'Z' || s[4] != '-' || s[7] != '-' || s[10] != 'T' || s[13] != ':' || s[16] != ':' {
		return 0, false
	}
	num := func(a, b int) (int, bool) {
		n := 0
		for _, c := range []byte(s[a:b]) {
			if c < '0' || c > '9' {
				return 0, false
			}
			n = n*10 + int(c-'0')
		}
		return n, true
	}
	y, ok1 := num(0, 4)
	mo, ok2 := num(5, 7)
	dd, ok3 := num(8, 10)
	h, ok4 := num(11, 13)
	mi, ok5 := num(14, 16)
	sec, ok6 := num(17, 19)
	if !(ok1 && ok2 && ok3 && ok4 && ok5 && ok6) || mo < 1 || mo > 12 || dd < 1 || dd > daysIn(mo, y) || h > 23 || mi > 59 || sec > 59 {
		return 0, false
	}
	var frac int64
	rest := s[19 : len(s)-1]
	if rest != "" {
		if rest[0] != '.' || len(rest) < 2 || len(rest) > 10 {
			return 0, false
		}
		digits := rest[1:]
		for _, c := range []byte(digits) {
			if c < '0' || c > '9' {
				return 0, false
			}
			frac = frac*10 + int64(c-'0')
		}
		for range 9 - len(digits) {
			frac *= 10
		}
	}
	days := daysFromCivil(y, mo, dd)
	return ((days*24+int64(h))*60+int64(mi))*60*1e9 + int64(sec)*1e9 + frac, true
}

func daysIn(m, y int) int {
	switch m {
	case 2:
		if y%4 == 0 && (y%100 != 0 || y%400 == 0) {
			return 29
		}
		return 28
	case 4, 6, 9, 11:
		return 30
	}
	return 31
}

// daysFromCivil counts days from 1970-01-01 (Howard Hinnant's algorithm).
func daysFromCivil(y, m, d int) int64 {
	if m <= 2 {
		y--
	}
	era := y / 400
	yoe := y - era*400
	mp := (m + 9) % 12
	doy := (153*mp+2)/5 + d - 1
	doe := yoe*365 + yoe/4 - yoe/100 + doy
	return int64(era*146097 + doe - 719468)
}
