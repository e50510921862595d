package learn

import (
	"bytes"
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/publicsuffix"

	"github.com/callscope/callscope/scope"
)

// Draft is the CallScope drafted for one caller.
type Draft struct {
	// Name is its metadata.name, and File a file name for it: Name with
	// ".yaml", safe in any folder.
	Name, File string
	// Subject says who it binds, for people: "namespace payments,
	// serviceAccount billing".
	Subject string
	// YAML is the document, with its evidence as comments.
	YAML []byte
}

// Drafts settles the connects still awaiting their tls event and returns
// one draft per caller, ordered by name. The same events give the same
// bytes. Call it once, after the last event.
func (l *Learner) Drafts() []Draft {
	l.flush()
	// Each caller's pairs, in a deterministic order.
	bySubject := make([][]pairKey, len(l.subjects))
	for k := range l.pairs {
		bySubject[k.subject] = append(bySubject[k.subject], k)
	}
	for _, keys := range bySubject {
		slices.SortFunc(keys, func(a, b pairKey) int {
			return cmp.Or(cmp.Compare(a.kind, b.kind), strings.Compare(l.names[a.name], l.names[b.name]),
				bytes.Compare(a.addr[:], b.addr[:]), cmp.Compare(a.port, b.port))
		})
	}
	var drafts []Draft
	taken := map[string]bool{}
	order := make([]int, len(l.subjects))
	for i := range order {
		order[i] = i
	}
	slices.SortFunc(order, func(a, b int) int { return compareSubjects(&l.subjects[a].key, &l.subjects[b].key) })
	st := l.Stats()
	for _, si := range order {
		keys := bySubject[si]
		if len(keys) == 0 {
			continue
		}
		s := &l.subjects[si]
		name := policyName(&s.key)
		if taken[name] {
			for n := 2; taken[name]; n++ {
				name = policyName(&s.key) + "-" + strconv.Itoa(n)
			}
		}
		taken[name] = true
		drafts = append(drafts, Draft{
			Name:    name,
			File:    name + ".yaml",
			Subject: describeSubject(&s.key),
			YAML:    l.document(name, s, keys, &st),
		})
	}
	slices.SortFunc(drafts, func(a, b Draft) int { return strings.Compare(a.Name, b.Name) })
	return drafts
}

func compareSubjects(a, b *subjectKey) int {
	return cmp.Or(cmp.Compare(a.kind, b.kind), strings.Compare(a.a, b.a), strings.Compare(a.b, b.b))
}

func describeSubject(k *subjectKey) string {
	switch k.kind {
	case subjectPod:
		return "namespace " + k.a + ", serviceAccount " + k.b
	case subjectUnit:
		return "systemdUnit " + k.a
	}
	return "exe " + k.a
}

// policyName derives a CallScope name from the caller: "<namespace>.<service
// account>" for a pod (a namespace has no dot, so no two pods share one),
// "unit.<name>-<hash>" and "exe.<path>-<hash>" for the others, their
// characters but letters and digits turned into '-', and the hash of the
// whole keeping them apart.
func policyName(k *subjectKey) string {
	if k.kind == subjectPod {
		if n := k.a + "." + k.b; len(n) <= 200 {
			return n
		}
	}
	prefix := "exe"
	switch k.kind {
	case subjectPod:
		prefix = "pod"
	case subjectUnit:
		prefix = "unit"
	}
	sum := sha256.Sum256([]byte(strconv.Itoa(int(k.kind)) + "\x00" + k.a + "\x00" + k.b))
	var b strings.Builder
	dash := true
	for _, r := range strings.ToLower(k.a + " " + k.b) {
		if r < utf8.RuneSelf && (r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			b.WriteRune(r)
			dash = false
		} else if !dash {
			b.WriteByte('-')
			dash = true
		}
	}
	body := strings.Trim(b.String(), "-")
	if len(body) > 180 {
		body = strings.Trim(body[len(body)-180:], "-")
	}
	if body == "" {
		return prefix + "." + hex.EncodeToString(sum[:4])
	}
	return prefix + "." + body + "-" + hex.EncodeToString(sum[:4])
}

// evidence sums what the calls of a destination say.
type evidence struct {
	calls       uint64
	first, last int64
	exe         uint32
}

func (e *evidence) add(o evidence) {
	if e.calls == 0 || o.first < e.first || (o.first == e.first && e.exe == 0) {
		e.first, e.exe = o.first, o.exe
	}
	e.calls += o.calls
	e.last = max(e.last, o.last)
}

// target is a destination with its ports, before rules are made.
type target struct {
	kind  destKind
	name  string
	addr  netip.Addr
	ports []uint16 // sorted
	ev    evidence
}

// entry is one line of a rule's to.
type entry struct {
	kind    destKind
	value   string
	ev      evidence
	members []string // the names or addresses an entry stands for, when it generalizes
	addr    netip.Prefix
}

func (l *Learner) document(name string, s *subject, keys []pairKey, st *Stats) []byte {
	// Destinations with their ports.
	type tkey struct {
		kind destKind
		name uint32
		addr [16]byte
		v4   bool
	}
	byDest := map[tkey]*target{}
	var targets []*target
	var total evidence
	for _, k := range keys {
		tk := tkey{k.kind, k.name, k.addr, k.v4}
		t, ok := byDest[tk]
		if !ok {
			t = &target{kind: k.kind, name: l.names[k.name]}
			if k.kind == kindCIDR {
				t.addr = netip.AddrFrom16(k.addr)
				if k.v4 {
					t.addr = t.addr.Unmap()
				}
			}
			byDest[tk] = t
			targets = append(targets, t)
		}
		t.ports = append(t.ports, k.port)
		p := l.records[l.pairs[k]]
		e := evidence(p)
		t.ev.add(e)
		total.add(e)
	}
	// Rules by port set.
	type group struct {
		ports   []uint16
		targets []*target
	}
	groups := map[string]*group{}
	var gs []*group
	for _, t := range targets {
		slices.Sort(t.ports)
		t.ports = slices.Compact(t.ports)
		if t.ports[0] == 0 {
			t.ports = nil // a call to port 0: any port
		}
		key := fmt.Sprint(t.ports)
		g, ok := groups[key]
		if !ok {
			g = &group{ports: t.ports}
			groups[key] = g
			gs = append(gs, g)
		}
		g.targets = append(g.targets, t)
	}
	slices.SortFunc(gs, func(a, b *group) int { return comparePorts(a.ports, b.ports) })

	var b strings.Builder
	b.WriteString("# Draft CallScope learnt from what was seen: review it before use.\n")
	fmt.Fprintf(&b, "# Caller: %s", describeSubject(&s.key))
	if len(s.identities) > 0 {
		fmt.Fprintf(&b, " (identity %s", commentText(s.identities[0]))
		if n := len(s.identities) - 1 + s.more; n > 0 {
			fmt.Fprintf(&b, ", and %d other(s)", n)
		}
		b.WriteString(")")
	}
	b.WriteString(".\n")
	fmt.Fprintf(&b, "# %s.\n", describeEvidence(&total, l.exes))
	if n := st.Skipped[SkipOverCap]; n > 0 {
		fmt.Fprintf(&b, "# INCOMPLETE: %d call(s) past --max-pairs %d were not learnt, for any caller.\n", n, l.cfg.MaxPairs)
	}
	if st.LossEvents > 0 {
		var lost uint64
		for _, x := range st.Lost {
			lost += x.Count
		}
		fmt.Fprintf(&b, "# INCOMPLETE: the input reported %d lost event(s), of any caller, in %d loss event(s).\n", lost, st.LossEvents)
	}
	b.WriteString("apiVersion: " + scope.APIVersion + "\n")
	b.WriteString("kind: " + scope.Kind + "\n")
	b.WriteString("metadata:\n  name: " + name + "\n")
	b.WriteString("spec:\n  subject:\n")
	switch s.key.kind {
	case subjectPod:
		b.WriteString("    namespace: " + yamlString(s.key.a) + "\n")
		b.WriteString("    serviceAccount: " + yamlString(s.key.b) + "\n")
	case subjectUnit:
		b.WriteString("    systemdUnit: " + yamlString(globEscape(s.key.a)) + "\n")
	case subjectExe:
		b.WriteString("    exe: " + yamlString(globEscape(s.key.a)) + "\n")
	}
	b.WriteString("  egress:\n")
	for _, g := range gs {
		entries := l.generalize(g.targets)
		var ge evidence
		for _, t := range g.targets {
			ge.add(t.ev)
		}
		fmt.Fprintf(&b, "    - to:  # %s\n", describeEvidence(&ge, l.exes))
		for _, e := range entries {
			fmt.Fprintf(&b, "        - %s: %s  # ", kindKeys[e.kind], yamlString(e.value))
			if len(e.members) > 1 {
				what := "names"
				if e.kind == kindCIDR {
					what = "addresses"
				}
				fmt.Fprintf(&b, "%d %s (%s), ", len(e.members), what, listSome(e.members, 4))
			}
			b.WriteString(describeEvidence(&e.ev, l.exes))
			b.WriteString("\n")
		}
		if len(g.ports) > 0 {
			b.WriteString("      ports: [" + formatPorts(g.ports) + "]\n")
		} else {
			b.WriteString("      # no ports: a call to port 0 was seen, so any port\n")
		}
	}
	return []byte(b.String())
}

func listSome(xs []string, n int) string {
	if len(xs) <= n {
		return commentText(strings.Join(xs, ", "))
	}
	return commentText(strings.Join(xs[:n], ", ")) + fmt.Sprintf(" and %d more", len(xs)-n)
}

func comparePorts(a, b []uint16) int {
	if len(a) == 0 || len(b) == 0 {
		return cmp.Compare(len(a), len(b))
	}
	return slices.Compare(a, b)
}

// describeEvidence gives "42 calls, 2026-11-27T04:32Z..2026-11-27T09:10Z, /app/billing".
func describeEvidence(e *evidence, exes []string) string {
	calls := "calls"
	if e.calls == 1 {
		calls = "call"
	}
	s := fmt.Sprintf("%d %s, %s..%s", e.calls, calls, minute(e.first), minute(e.last))
	if e.exe != 0 {
		s += ", " + commentText(exes[e.exe])
	}
	return s
}

// minute gives a time to the minute, rounded down for the first and the
// last alike: "2026-11-27T04:32Z".
func minute(ns int64) string {
	return time.Unix(0, ns).UTC().Format("2006-01-02T15:04Z")
}

// commentText keeps a comment on its line: anything but printable text is
// quoted.
func commentText(s string) string {
	for _, r := range s {
		if !unicode.IsPrint(r) || r == utf8.RuneError {
			return strconv.QuoteToASCII(s)
		}
	}
	return s
}

// formatPorts lists ports, runs of three or more as ranges: 443, "8000-8010".
func formatPorts(ports []uint16) string {
	var parts []string
	for i := 0; i < len(ports); {
		j := i
		for j+1 < len(ports) && ports[j+1] == ports[j]+1 {
			j++
		}
		if j-i >= 2 {
			parts = append(parts, fmt.Sprintf(`"%d-%d"`, ports[i], ports[j]))
			i = j + 1
			continue
		}
		parts = append(parts, strconv.Itoa(int(ports[i])))
		i++
	}
	return strings.Join(parts, ", ")
}

// generalize turns a rule's targets into its entries: callees, then SNI,
// DNS names, then addresses, each kind sorted.
func (l *Learner) generalize(ts []*target) []entry {
	var out []entry
	byKind := map[destKind][]*target{}
	for _, t := range ts {
		byKind[t.kind] = append(byKind[t.kind], t)
	}
	for kind := kindService; kind <= kindCIDR; kind++ {
		group := byKind[kind]
		switch kind {
		case kindService, kindNamespace:
			slices.SortFunc(group, func(a, b *target) int { return strings.Compare(a.name, b.name) })
			for _, t := range group {
				out = append(out, entry{kind: kind, value: t.name, ev: t.ev})
			}
		case kindSNI, kindDNS:
			out = append(out, wildcards(kind, group, l.cfg.WildcardMin)...)
		case kindCIDR:
			out = append(out, mergePrefixes(group, l.cfg.MaxPrefix4, l.cfg.MaxPrefix6)...)
		}
	}
	return out
}

// wildcards writes names as they are, but for sibling names (one label
// below the same parent) when at least min of them share a parent that is
// not a public suffix: those become one "*.parent". A pattern sorts with
// the names by its parent.
func wildcards(kind destKind, ts []*target, min int) []entry {
	byParent := map[string][]*target{}
	for _, t := range ts {
		if _, parent, ok := strings.Cut(t.name, "."); ok && strings.Contains(parent, ".") {
			byParent[parent] = append(byParent[parent], t)
		}
	}
	wild := map[*target]bool{}
	var out []entry
	for parent, sibs := range byParent {
		if min < 2 || len(sibs) < min {
			continue
		}
		if suffix, _ := publicsuffix.PublicSuffix(parent); suffix == parent {
			continue
		}
		e := entry{kind: kind, value: "*." + parent}
		for _, t := range sibs {
			wild[t] = true
			e.ev.add(t.ev)
			e.members = append(e.members, t.name)
		}
		slices.Sort(e.members)
		out = append(out, e)
	}
	for _, t := range ts {
		if !wild[t] {
			out = append(out, entry{kind: kind, value: t.name, ev: t.ev})
		}
	}
	slices.SortFunc(out, func(a, b entry) int {
		return cmp.Or(strings.Compare(sortName(a.value), sortName(b.value)), strings.Compare(a.value, b.value))
	})
	return out
}

// sortName orders names by their labels from the right, so that a domain's
// names and its pattern sit together.
func sortName(s string) string {
	labels := strings.Split(strings.TrimPrefix(s, "*."), ".")
	slices.Reverse(labels)
	return strings.Join(labels, ".")
}

// mergePrefixes writes addresses as prefixes, merging two sibling
// prefixes (the two halves of a shorter one) as long as the shorter one
// is no wider than the maximum: a merged prefix covers only addresses
// that were seen.
func mergePrefixes(ts []*target, max4, max6 int) []entry {
	slices.SortFunc(ts, func(a, b *target) int { return a.addr.Compare(b.addr) })
	var out []entry
	type item struct {
		p       netip.Prefix
		ev      evidence
		members []string
	}
	var stack []item
	for _, t := range ts {
		a := t.addr
		stack = append(stack, item{p: netip.PrefixFrom(a, a.BitLen()), ev: t.ev, members: []string{a.String()}})
		for len(stack) >= 2 {
			x, y := stack[len(stack)-2], stack[len(stack)-1]
			bits := x.p.Bits()
			limit := max6
			if x.p.Addr().Is4() {
				limit = max4
			}
			if y.p.Bits() != bits || x.p.Addr().Is4() != y.p.Addr().Is4() || bits-1 < limit {
				break
			}
			parent, _ := x.p.Addr().Prefix(bits - 1)
			if parent.Addr() != x.p.Addr() || !parent.Contains(y.p.Addr()) {
				break
			}
			x.ev.add(y.ev)
			x.members = append(x.members, y.members...)
			x.p = parent
			stack = append(stack[:len(stack)-2], x)
		}
	}
	for _, it := range stack {
		out = append(out, entry{kind: kindCIDR, value: it.p.String(), ev: it.ev, members: it.members, addr: it.p})
	}
	return out
}

// globEscape writes s as a path.Match pattern that matches s alone.
func globEscape(s string) string {
	if !strings.ContainsAny(s, `*?[\`) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if strings.ContainsRune(`*?[\`, r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// yamlString writes s as a YAML scalar: plain when it cannot be read as
// anything but this string, else double-quoted.
func yamlString(s string) string {
	if plainSafe(s) {
		return s
	}
	return strconv.Quote(s) // valid UTF-8 (see printable): its escapes are YAML's
}

func plainSafe(s string) bool {
	if s == "" {
		return false
	}
	c0 := s[0]
	if !(c0 >= 'a' && c0 <= 'z' || c0 >= 'A' && c0 <= 'Z' || c0 >= '0' && c0 <= '9' || c0 == '/') {
		return false
	}
	letter := false
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z':
			letter = true
		case c >= '0' && c <= '9', c == '.', c == '-', c == '_', c == '/':
		default:
			return false
		}
	}
	// Numbers, booleans and nulls read as what they are.
	if _, err := strconv.ParseFloat(s, 64); err == nil {
		return false
	}
	switch strings.ToLower(s) {
	case "true", "false", "yes", "no", "on", "off", "y", "n", "null", "nan", "inf":
		return false
	}
	if !letter {
		// Digits, dots and slashes: an address or prefix, which YAML reads as a string.
		return strings.ContainsAny(s, "./")
	}
	if len(s) > 1 && s[0] == '0' && (s[1] == 'x' || s[1] == 'o' || s[1] == 'X') {
		return false
	}
	return true
}

// Checks of names as scope.Parse makes them, so that what is written loads.

func isDNSLabel(s string) bool {
	if s == "" || s[0] == '-' || s[len(s)-1] == '-' {
		return false
	}
	for i := 0; i < len(s); i++ {
		if c := s[i]; !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

func isSubdomain(s string) bool {
	if len(s) > 253 {
		return false
	}
	for label := range strings.SplitSeq(s, ".") {
		if !isDNSLabel(label) {
			return false
		}
	}
	return true
}

func isService(s string) bool {
	ns, name, ok := strings.Cut(s, "/")
	return ok && len(ns) <= 63 && isDNSLabel(ns) && len(name) <= 63 && isDNSLabel(name) && name[0] >= 'a' && name[0] <= 'z'
}

// hostName gives a name as a dns or sni entry writes it (lowercase, no
// trailing dot), if it is a host name such an entry takes.
func hostName(s string) (string, bool) {
	s = strings.TrimSuffix(s, ".")
	if s == "" || len(s) > 253 {
		return "", false
	}
	lower := true
	for label := range strings.SplitSeq(s, ".") {
		if label == "" || len(label) > 63 {
			return "", false
		}
		for i := 0; i < len(label); i++ {
			switch c := label[i]; {
			case c >= 'a' && c <= 'z', c >= '0' && c <= '9', c == '-', c == '_':
			case c >= 'A' && c <= 'Z':
				lower = false
			default:
				return "", false
			}
		}
	}
	if !lower {
		s = strings.ToLower(s)
	}
	return s, true
}

// printable says s can stand in a YAML file as a selector: valid UTF-8,
// no control characters.
func printable(s string) bool {
	if s == "" || !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == 0xfeff {
			return false
		}
	}
	return true
}
