package scope

import (
	"path"
	"strings"
)

// anyHostMatches reports whether name matches one of the patterns.
func anyHostMatches(patterns []string, name string) bool {
	for _, p := range patterns {
		if hostMatches(p, name) {
			return true
		}
	}
	return false
}

// hostMatches matches a name against a pattern, ignoring ASCII case and a
// trailing dot: "*" stands for exactly one label, a leading "**." for one
// or more. It does not allocate.
func hostMatches(pattern, name string) bool {
	name = strings.TrimSuffix(name, ".")
	rest, deep := strings.CutPrefix(pattern, "**.")
	if !deep {
		return labelsMatch(pattern, name)
	}
	for i := 0; i < len(name); i++ {
		if name[i] == '.' && i > 0 && labelsMatch(rest, name[i+1:]) {
			return true
		}
	}
	return false
}

func labelsMatch(p, n string) bool {
	for {
		pl, prest, pmore := strings.Cut(p, ".")
		nl, nrest, nmore := strings.Cut(n, ".")
		if nl == "" || (pl != "*" && !strings.EqualFold(pl, nl)) {
			return false
		}
		if !pmore || !nmore {
			return pmore == nmore
		}
		p, n = prest, nrest
	}
}

// globMatches is path.Match, with '/' as the separator that '*' does not
// cross. Patterns were checked when loaded, so an error is a non-match.
func globMatches(pattern, s string) bool {
	ok, err := path.Match(pattern, s)
	return err == nil && ok
}
