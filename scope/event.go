package scope

import "github.com/callscope/callscope/enrich"

// Event is an enriched event with its verdict.
//
// A Stage also makes events of its own, of kind collector.KindVerdict: each
// closes a pending call whose ClientHello never came, and is a copy of the
// call's connect (same conn, process, identity and destination) bearing the
// time it was judged and its final verdict.
type Event struct {
	enrich.Event
	// Scope is the verdict on the call. Its Verdict is zero when no policy
	// is loaded, and on events that are not calls (loss).
	Scope Judgement
	// Findings are the hygiene marks on the call, whatever its verdict
	// and with or without policies; none on events that are not calls. A
	// verdict event repeats its connect's.
	Findings Findings
}
