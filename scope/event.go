package scope

import "github.com/callscope/callscope/enrich"

// Event is an enriched event with its verdict.
type Event struct {
	enrich.Event
	// Scope is the verdict on the call. Its Verdict is zero when no policy
	// is loaded, and on events that are not calls (loss).
	Scope Judgement
}
