package scope

// MaxRuleHitSeries bounds the rules whose hits are counted apart, in
// compile order (files in the order given, then the cluster's objects):
// past it, the calls rules allow are counted together, as overflow, so that
// a policy set of very many rules cannot make as many metric series.
const MaxRuleHitSeries = 10_000

// RuleHits calls fn with the calls each rule in force allowed, the rule
// named as in a verdict ("billing-egress/egress[0]"), for the first
// MaxRuleHitSeries rules, and returns the calls the rules past them
// allowed. A rule that is not in force is not reported. A rule's count
// carries over a reload that keeps its name (see inherit), and starts again
// from zero when the rule comes back after leaving the policies. It may be
// called from any goroutine.
func (m *Matcher) RuleHits(fn func(policy, rule string, hits uint64)) (overflow uint64) {
	if m == nil {
		return 0
	}
	for i := range m.policies {
		p := &m.policies[i]
		for j := range p.rules {
			if r := &p.rules[j]; r.own {
				fn(p.name, r.name, r.hits.Load())
			}
		}
	}
	return m.overflow.Load()
}

// inherit carries old's counts of the rules both have, and its overflow
// count, over to m, so that a reload does not reset what it leaves alone.
// The counts are copied rather than shared, so that m keeps nothing of the
// policy set it replaces alive; the calls judged with old after the copy,
// until the pipeline takes m up at its next batch, are not carried over.
// It must be called before m is in use.
func (m *Matcher) inherit(old *Matcher) {
	if old == nil {
		return
	}
	counts := make(map[string]uint64)
	for i := range old.policies {
		for j := range old.policies[i].rules {
			if r := &old.policies[i].rules[j]; r.own {
				counts[r.name] = r.hits.Load()
			}
		}
	}
	m.overflow.Store(old.overflow.Load())
	for i := range m.policies {
		for j := range m.policies[i].rules {
			if r := &m.policies[i].rules[j]; r.own {
				r.hits.Store(counts[r.name])
			}
		}
	}
}
