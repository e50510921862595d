package scope

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"go.yaml.in/yaml/v3"

	"github.com/callscope/callscope/internal/yamlsyntax"
)

const (
	// maxFileSize is a ConfigMap's limit, which no policy file mounted from
	// one can pass, and keeps a mistaken path (a log, a disk image) from
	// being read whole. A thousand CallScopes of a few rules take 450 KiB.
	maxFileSize = 1 << 20
	// maxDocNodes bounds the YAML nodes of a document, as documentBounds
	// counts them before yaml.v3 builds its tree of it, at about 250 bytes
	// a node; documents defining anchors count on, as the decoder keeps
	// what they name. A CallScope of a few rules takes about 100; 25,000
	// are some 6,000 destinations.
	maxDocNodes = 25_000
	// maxAliasNodes bounds the nodes that the aliases of a file stand for,
	// and so what aliases add to the policies made of it, at some 35 bytes
	// a node: an alias bomb fails before it is walked.
	maxAliasNodes = 50_000
	// maxErrors is past what anyone reads, and keeps a file of garbage
	// from producing one message per line.
	maxErrors = 100
)

var (
	topFields      = []string{"apiVersion", "kind", "metadata", "spec"}
	metadataFields = []string{"name", "labels", "annotations"}
	specFields     = []string{"subject", "egress", "mode"}
	subjectFields  = []string{"namespace", "serviceAccount", "podLabels", "spiffeID", "systemdUnit", "exe", "cgroup"}
	ruleFields     = []string{"to", "ports", "protocol"}
	peerFields     = []string{"cidr", "dns", "sni", "service", "namespace", "spiffeID"}
)

// peerKinds lists peerFields for messages.
const peerKinds = "cidr, dns, sni, service, namespace or spiffeID"

// Parse reads the CallScopes of one file: YAML documents separated by
// "---", where empty documents are skipped. name is the file's name in
// error positions. When there is any problem, the error is an *Errors
// listing them all and no policy is returned.
func Parse(name string, data []byte) ([]Policy, error) {
	policies, errs := parseFile(name, data, map[string]Position{})
	if len(errs) > 0 {
		return nil, &errs
	}
	return policies, nil
}

// parseFile parses one file. names holds the position of each name already
// taken, by this file or by those read before it.
func parseFile(file string, data []byte, names map[string]Position) ([]Policy, Errors) {
	if len(data) > maxFileSize {
		return nil, Errors{tooLarge(file)}
	}
	if err := checkDocumentBounds(file, data); err != nil {
		return nil, Errors{err}
	}
	p := &parser{file: file, data: data, budget: maxAliasNodes, names: names}
	var policies []Policy
	dec := yaml.NewDecoder(bytes.NewReader(data))
	for !p.stop {
		var doc yaml.Node
		err := decode(dec, &doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			// The decoder cannot find its way past a syntax error.
			p.yamlError(err)
			break
		}
		if policy, ok := p.document(&doc); ok {
			policies = append(policies, policy)
		}
	}
	sortByPosition(p.errs)
	if p.dropped {
		p.errs = append(p.errs, &Error{Pos: Position{File: file}, Msg: fmt.Sprintf("more than %d problems; stopped checking", maxErrors)})
	}
	return policies, p.errs
}

func tooLarge(file string) *Error {
	return &Error{Pos: Position{File: file}, Msg: fmt.Sprintf("larger than %d MiB: not read", maxFileSize>>20)}
}

// checkDocumentBounds refuses a file before it is decoded if a document of
// it may come to more than maxDocNodes nodes in memory, with the documents
// before it whose anchors the decoder keeps.
func checkDocumentBounds(file string, data []byte) *Error {
	var err *Error
	kept := 0
	documentBounds(data, func(d docBound) bool {
		if kept+d.nodes <= maxDocNodes {
			if d.anchor {
				kept += d.nodes
			}
			return true
		}
		msg := fmt.Sprintf("document of more than %d YAML nodes (values, keys, lists and mappings): not read; split it into several CallScopes", maxDocNodes)
		if kept > 0 {
			msg = fmt.Sprintf("document of more than %d YAML nodes (values, keys, lists and mappings), with the %d of the documents before it that define anchors: not read; split the file", maxDocNodes, kept)
		}
		err = &Error{Pos: Position{File: file, Line: d.line}, Msg: msg}
		return false
	})
	return err
}

// decode reads the next document. yaml.v3 reports its failures as errors,
// but a bug of its could still panic, and a bad policy file must not bring
// the agent down.
func decode(dec *yaml.Decoder, doc *yaml.Node) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("yaml: parser failed: %v", r)
		}
	}()
	return dec.Decode(doc)
}

type parser struct {
	file    string
	data    []byte
	names   map[string]Position
	budget  int // nodes the file's aliases may still stand for
	errs    Errors
	dropped bool // past maxErrors
	stop    bool // the rest of the file is not to be read
}

func (p *parser) pos(n *yaml.Node) Position {
	return Position{File: p.file, Line: n.Line, Column: n.Column}
}

// errorf reports a problem at n, or at what n names if it is an alias:
// that is where the text to fix is.
func (p *parser) errorf(n *yaml.Node, field, format string, args ...any) {
	p.errorAt(p.pos(resolve(n)), field, format, args...)
}

func (p *parser) errorAt(pos Position, field, format string, args ...any) {
	if len(p.errs) >= maxErrors {
		p.dropped, p.stop = true, true
		return
	}
	p.errs = append(p.errs, &Error{Pos: pos, Field: field, Msg: fmt.Sprintf(format, args...)})
}

// yamlError reports a syntax error where it is: yaml.v3's message gives
// the line of something else, or none (see yamlsyntax).
func (p *parser) yamlError(err error) {
	if found := yamlsyntax.Find(p.data); found != nil {
		p.errorAt(Position{File: p.file, Line: found.Line, Column: found.Column}, "", "invalid YAML: %s", found.Msg)
		return
	}
	// The message holds at most a line, which cannot be trusted.
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if _, text, ok := strings.Cut(rest, ": "); ok {
			msg = text
		}
	}
	p.errorAt(Position{File: p.file}, "", "invalid YAML: %s", msg)
}

// document reads one document; ok is false for an empty one, or one too
// large or tangled to be read at all.
func (p *parser) document(doc *yaml.Node) (policy Policy, ok bool) {
	if len(doc.Content) == 0 {
		return Policy{}, false
	}
	root := resolve(doc.Content[0])
	if isNull(root) {
		return Policy{}, false
	}
	if !p.spend(root) {
		return Policy{}, false
	}
	policy.Source = p.pos(root)
	if root.Kind != yaml.MappingNode {
		p.errorf(root, "", "a CallScope must be a mapping of %s, not %s", strings.Join(topFields, ", "), describe(root))
		return policy, true
	}
	f := p.fields(root, "", topFields)

	if v := f.get("apiVersion"); absent(v) {
		p.errorf(root, "apiVersion", "missing; want %s", APIVersion)
	} else if s, ok := p.str(v, "apiVersion"); ok && s != APIVersion {
		p.errorf(v, "apiVersion", "%s is not supported; want %s", quote(s), APIVersion)
	}
	if v := f.get("kind"); absent(v) {
		p.errorf(root, "kind", "missing; want %s", Kind)
	} else if s, ok := p.str(v, "kind"); ok && s != Kind {
		// The rest is some other kind of object: checking it as a
		// CallScope would only bury this error.
		p.errorf(v, "kind", "%s is not %s", quote(s), Kind)
		return policy, true
	}
	policy.Name = p.metadata(root, f.get("metadata"))
	if v := f.get("spec"); absent(v) {
		p.errorf(root, "spec", "missing")
	} else if spec := p.mapping(v, "spec"); spec != nil {
		p.spec(spec, &policy)
	}
	return policy, true
}

// spend charges the nodes that the aliases under n stand for to the file's
// budget.
func (p *parser) spend(n *yaml.Node) bool {
	count, loop := aliasedNodes(n, p.budget+1)
	p.budget -= count
	switch {
	case loop != nil:
		p.errorAt(p.pos(loop), "", "alias *%s is inside the node it names", loop.Value)
	case p.budget < 0:
		p.errorf(n, "", "the aliases of the file stand for more than %d YAML nodes (values, keys, lists and mappings): not read", maxAliasNodes)
		p.stop = true
	default:
		return true
	}
	return false
}

// aliasedNodes counts the nodes under root that are reached through an
// alias, each time they are, up to limit, and finds an alias inside the
// node it names, which would never end. It keeps its own stack: nesting
// and alias chains may be deep.
func aliasedNodes(root *yaml.Node, limit int) (count int, loop *yaml.Node) {
	type frame struct {
		n       *yaml.Node
		next    int
		aliased bool // reached through an alias
	}
	top := frame{n: resolve(root), aliased: root.Kind == yaml.AliasNode}
	if top.aliased {
		count = 1
	}
	stack := []frame{top}
	open := map[*yaml.Node]bool{top.n: true} // anchored nodes being walked
	for len(stack) > 0 && count < limit {
		top := &stack[len(stack)-1]
		if top.next == len(top.n.Content) {
			delete(open, top.n)
			stack = stack[:len(stack)-1]
			continue
		}
		child := top.n.Content[top.next]
		top.next++
		aliased := top.aliased || child.Kind == yaml.AliasNode
		if child.Kind == yaml.AliasNode && open[child.Alias] {
			return count, child
		}
		child = resolve(child)
		if child.Anchor != "" {
			open[child] = true
		}
		if aliased {
			count++
		}
		stack = append(stack, frame{n: child, aliased: aliased})
	}
	return count, nil
}

func (p *parser) metadata(root, v *yaml.Node) string {
	if absent(v) {
		p.errorf(root, "metadata.name", "missing")
		return ""
	}
	m := p.mapping(v, "metadata")
	if m == nil {
		return ""
	}
	f := p.fields(m, "metadata", metadataFields)
	n := f.get("name")
	if absent(n) {
		p.errorf(m, "metadata.name", "missing")
		return ""
	}
	name, ok := p.str(n, "metadata.name")
	if !ok {
		return ""
	}
	if err := checkSubdomain(name); err != nil {
		p.errorf(n, "metadata.name", "%v", err)
		return ""
	}
	if first, taken := p.names[name]; taken {
		p.errorf(n, "metadata.name", "%s is taken by the CallScope at %s", quote(name), first)
	} else {
		p.names[name] = p.pos(resolve(n))
	}
	return name
}

func (p *parser) spec(spec *yaml.Node, policy *Policy) {
	f := p.fields(spec, "spec", specFields)
	if v := f.get("mode"); !absent(v) {
		if s, ok := p.str(v, "mode"); ok {
			switch s {
			case "enforce":
				policy.Mode = Enforce
			case "audit":
				policy.Mode = Audit
			default:
				p.errorf(v, "mode", "%s is not a mode: want enforce (the default) or audit", quote(s))
			}
		}
	}
	if v := f.get("subject"); absent(v) {
		p.errorf(spec, "subject", "missing; give at least one of %s", strings.Join(subjectFields, ", "))
	} else if m := p.mapping(v, "subject"); m != nil {
		policy.Subject = p.subject(m)
	}
	// No egress at all is a scope that allows nothing.
	if v := f.get("egress"); !absent(v) {
		if list := p.list(v, "egress"); list != nil {
			for i, item := range list.Content {
				if r, ok := p.rule(item, fmt.Sprintf("egress[%d]", i)); ok {
					policy.Egress = append(policy.Egress, r)
				}
			}
		}
	}
}

func (p *parser) subject(m *yaml.Node) Subject {
	var s Subject
	f := p.fields(m, "subject", subjectFields)
	given := false
	// text reads one selector, checking it with check.
	text := func(key string, check func(string) error) string {
		v := f.get(key)
		if absent(v) {
			return ""
		}
		given = true
		field := "subject." + key
		str, ok := p.str(v, field)
		if !ok {
			return ""
		}
		if err := check(str); err != nil {
			p.errorf(v, field, "%v", err)
			return ""
		}
		return str
	}
	s.Namespace = text("namespace", checkDNSLabel)
	s.ServiceAccount = text("serviceAccount", checkSubdomain)
	s.SpiffeID = text("spiffeID", checkGlob)
	s.SystemdUnit = text("systemdUnit", checkGlob)
	s.Exe = text("exe", checkGlob)
	s.Cgroup = text("cgroup", checkGlob)
	if v := f.get("podLabels"); !absent(v) {
		s.PodLabels = p.podLabels(v)
		given = given || len(resolve(v).Content) > 0
	}
	if !given {
		p.errorf(m, "subject", "give at least one of %s", strings.Join(subjectFields, ", "))
	}
	return s
}

func (p *parser) podLabels(v *yaml.Node) map[string]string {
	m := p.mapping(v, "subject.podLabels")
	if m == nil {
		return nil
	}
	labels := make(map[string]string, len(m.Content)/2)
	for i := 0; i+1 < len(m.Content); i += 2 {
		kn, vn := resolve(m.Content[i]), m.Content[i+1]
		key, ok := p.str(kn, "subject.podLabels")
		if !ok {
			continue
		}
		field := "subject.podLabels." + key
		if key == "" {
			p.errorf(kn, "subject.podLabels", "a label key is empty")
			continue
		}
		if _, dup := labels[key]; dup {
			p.errorf(kn, field, "given twice")
			continue
		}
		// A null would silently become "" and match only empty labels.
		if value, ok := p.str(vn, field); ok {
			labels[key] = value
		}
	}
	return labels
}

func (p *parser) rule(item *yaml.Node, field string) (Rule, bool) {
	m := p.mapping(item, field)
	if m == nil {
		return Rule{}, false
	}
	r := Rule{Protocol: "tcp", Source: p.pos(m)}
	f := p.fields(m, field, ruleFields)

	if v := f.get("to"); absent(v) {
		p.errorf(m, field+".to", "missing; give at least one of "+peerKinds+" (0.0.0.0/0 and ::/0 are any address)")
	} else if list := p.list(v, field+".to"); list != nil {
		if len(list.Content) == 0 {
			p.errorf(list, field+".to", "empty; give at least one of "+peerKinds)
		} else {
			// Sized at once: aliases may make many rules of one long list.
			r.To = make([]Peer, 0, len(list.Content))
		}
		for i, item := range list.Content {
			if peer, ok := p.peer(item, fmt.Sprintf("%s.to[%d]", field, i)); ok {
				r.To = append(r.To, peer)
			}
		}
	}

	// An empty or null list is more likely an unfinished edit than a
	// wish to allow every port, which is what leaving ports out says.
	if v := f.get("ports"); v != nil {
		if list := p.list(v, field+".ports"); list != nil {
			if len(list.Content) == 0 {
				p.errorf(list, field+".ports", "empty; leave ports out to allow any port")
			} else {
				r.Ports = make([]PortRange, 0, len(list.Content))
			}
			for i, item := range list.Content {
				if pr, ok := p.ports(item, fmt.Sprintf("%s.ports[%d]", field, i)); ok {
					r.Ports = append(r.Ports, pr)
				}
			}
		}
	}

	if v := f.get("protocol"); !absent(v) {
		if s, ok := p.str(v, field+".protocol"); ok && !strings.EqualFold(s, "tcp") {
			p.errorf(v, field+".protocol", "%s: only tcp is supported", quote(s))
		}
	}
	return r, true
}

func (p *parser) peer(item *yaml.Node, field string) (Peer, bool) {
	m := p.mapping(item, field)
	if m == nil {
		return Peer{}, false
	}
	f := p.fields(m, field, peerFields)
	var peer Peer
	var given []string
	for _, key := range peerFields {
		v := f.get(key)
		if absent(v) {
			continue
		}
		given = append(given, key)
		s, ok := p.str(v, field+"."+key)
		if !ok {
			continue
		}
		var err error
		switch key {
		case "cidr":
			peer.CIDR, err = parseCIDR(s)
		case "dns":
			peer.DNS, err = hostPattern(s)
		case "sni":
			peer.SNI, err = hostPattern(s)
		case "service":
			peer.Service, err = s, checkService(s)
		case "namespace":
			peer.Namespace, err = s, checkDNSLabel(s)
		case "spiffeID":
			peer.SpiffeID, err = s, checkSpiffeGlob(s)
		}
		if err != nil {
			p.errorf(v, field+"."+key, "%v", err)
		}
	}
	switch len(given) {
	case 0:
		p.errorf(m, field, "give one of "+peerKinds)
	case 1:
	default:
		p.errorf(m, field, "give only one of %s, not %s", peerKinds, strings.Join(given, " and "))
	}
	return peer, true
}

func (p *parser) ports(item *yaml.Node, field string) (PortRange, bool) {
	n := resolve(item)
	if n.Kind != yaml.ScalarNode || (n.ShortTag() != "!!int" && n.ShortTag() != "!!str") {
		p.errorf(n, field, `%s is not a port: want a number from 1 to 65535 or a range "from-to"`, describe(n))
		return PortRange{}, false
	}
	pr, err := parsePorts(n.Value)
	if err != nil {
		p.errorf(n, field, "%v", err)
		return PortRange{}, false
	}
	return pr, true
}

// fieldSet is a mapping's values by key, for the few keys known. It is an
// array rather than a map: a file may have many mappings, each read once.
type fieldSet struct {
	known  []string
	values [maxFields]*yaml.Node
}

// maxFields is the most fields any mapping of a CallScope has.
const maxFields = 8

// get gives the value of key, nil if it is not given.
func (f *fieldSet) get(key string) *yaml.Node {
	return f.values[slices.Index(f.known, key)]
}

// fields reads a mapping whose keys must be among known and given once,
// and returns its values by key.
func (p *parser) fields(m *yaml.Node, field string, known []string) *fieldSet {
	f := &fieldSet{known: known}
	var keys [maxFields]*yaml.Node
	for i := 0; i+1 < len(m.Content); i += 2 {
		k := resolve(m.Content[i])
		at := -1
		if k.Kind == yaml.ScalarNode && k.ShortTag() != "!!merge" {
			at = slices.Index(known, k.Value)
		}
		switch {
		case k.Kind != yaml.ScalarNode:
			p.errorf(k, field, "a key must be a string, not %s", describe(k))
		case k.ShortTag() == "!!merge":
			p.errorf(k, field, "merge keys (<<) are not supported")
		case at < 0:
			hint := ""
			if i := slices.IndexFunc(known, func(s string) bool { return strings.EqualFold(s, k.Value) }); i >= 0 {
				hint = "did you mean " + known[i] + "? "
			}
			p.errorf(k, field, "unknown field %s; %svalid fields are %s", quote(k.Value), hint, strings.Join(known, ", "))
		case keys[at] != nil:
			first := keys[at]
			p.errorf(k, field, "%s given twice (first at %d:%d)", quote(k.Value), first.Line, first.Column)
		default:
			keys[at] = k
			f.values[at] = m.Content[i+1]
		}
	}
	return f
}

// mapping returns v as a mapping, or reports what else it is.
func (p *parser) mapping(v *yaml.Node, field string) *yaml.Node {
	n := resolve(v)
	if n.Kind != yaml.MappingNode {
		p.errorf(n, field, "must be a mapping, not %s", describe(n))
		return nil
	}
	return n
}

// list returns v as a sequence, or reports what else it is.
func (p *parser) list(v *yaml.Node, field string) *yaml.Node {
	n := resolve(v)
	if n.Kind != yaml.SequenceNode {
		p.errorf(n, field, "must be a list, not %s", describe(n))
		return nil
	}
	return n
}

// str returns v as a string. Other scalars are refused rather than taken
// as written: Kubernetes, which reads the same objects, would refuse them.
func (p *parser) str(v *yaml.Node, field string) (string, bool) {
	n := resolve(v)
	if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
		if n.Kind == yaml.ScalarNode && !isNull(n) {
			p.errorf(n, field, "must be a string, not %s: quote it", describe(n))
		} else {
			p.errorf(n, field, "must be a string, not %s", describe(n))
		}
		return "", false
	}
	return n.Value, true
}

// resolve gives the node an alias stands for.
func resolve(n *yaml.Node) *yaml.Node {
	if n.Kind == yaml.AliasNode && n.Alias != nil {
		return n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

// absent says a field is not given: left out, or null.
func absent(v *yaml.Node) bool {
	return v == nil || isNull(resolve(v))
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		if isNull(n) {
			return "null"
		}
		if n.ShortTag() == "!!str" {
			return quote(n.Value)
		}
		return strings.TrimPrefix(n.ShortTag(), "!!") + " " + cut(n.Value)
	}
	return "nothing"
}
