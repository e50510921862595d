package scope

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"slices"
)

// Version names a set of policies: the first 12 hex digits of the SHA-256
// of its canonical form. It is the same for the same policies whatever
// files or objects they come from, in whatever order, and however their
// YAML is written (quoting, flow or block style, key order, comments, the
// case of a host name), since it is taken of what the parser makes of them;
// any change to what a policy says changes it. Every verdict carries the
// version of the set that gave it, so that whoever reads an event can tell
// which policies judged the call.
func Version(policies []Policy) string {
	canon := make([]Policy, len(policies))
	for i, p := range policies {
		// Where a policy was read says nothing of what it allows.
		p.Source = Position{}
		// Nothing given and an empty list or mapping say the same.
		if len(p.Subject.PodLabels) == 0 {
			p.Subject.PodLabels = nil
		}
		p.Egress = slices.Clip(slices.Clone(p.Egress))
		if len(p.Egress) == 0 {
			p.Egress = nil
		}
		for j := range p.Egress {
			p.Egress[j].Source = Position{}
		}
		canon[i] = p
	}
	// Names are unique in a set, so the order is total.
	slices.SortFunc(canon, func(a, b Policy) int { return cmp.Compare(a.Name, b.Name) })
	// JSON covers every field, those added later too, and writes maps
	// with their keys sorted.
	b, err := json.Marshal(canon)
	if err != nil {
		// Policy holds strings, numbers, maps of strings and prefixes.
		panic("scope: policy version: " + err.Error())
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:6])
}

// Version names the policies m judges with; see [Version].
func (m *Matcher) Version() string { return m.version }
