package conflict

import (
	"strconv"

	"github.com/casualdb/casualdb"
)

// The rules that a Decision names; apply records them in the conflict log.
const (
	RuleFresh  = "fresh"  // nothing was stored: the incoming version is taken
	RuleCausal = "causal" // the incoming version has seen the stored one and wins
	RuleStale  = "stale"  // the stored clock already covers the incoming version
	RuleLWW    = "lww"    // last-writer-wins chose between concurrent versions
)

// Less reports whether a loses to b under last-writer-wins: by HLC, then by
// Origin (byte-wise string compare). It is a strict total order on (HLC,
// Origin), the same at every site; the VC takes no part.
func Less(a, b casualdb.Version) bool {
	if c := a.HLC.Compare(b.HLC); c != 0 {
		return c < 0
	}
	return a.Origin < b.Origin
}

// Outcome classifies an incoming version against the stored one.
type Outcome int

// The outcomes of Decide.
const (
	// Fresh: nothing was stored for the row.
	Fresh Outcome = iota
	// Overwrite: the incoming version causally follows the stored one.
	Overwrite
	// Stale: the incoming version is causally before or equal to the stored
	// one: a duplicate or a superseded write.
	Stale
	// Conflict: the versions are concurrent (or their clocks contradict
	// last-writer-wins); the caller logs it.
	Conflict
)

// String returns "fresh", "overwrite", "stale" or "conflict".
func (o Outcome) String() string {
	switch o {
	case Fresh:
		return "fresh"
	case Overwrite:
		return "overwrite"
	case Stale:
		return "stale"
	case Conflict:
		return "conflict"
	}
	return "Outcome(" + strconv.Itoa(int(o)) + ")"
}

// Decision is what apply must do with an incoming version of a row.
type Decision struct {
	Outcome Outcome
	// Apply reports that the incoming version wins: write its row image.
	Apply bool
	// Stored is the version to record after the merge: the winner's HLC and
	// Origin, VC = Join(stored.VC, incoming.VC). Its VC is a new map.
	Stored casualdb.Version
	// Rule is the rule that chose: RuleFresh, RuleCausal, RuleStale or RuleLWW.
	Rule string
}

// Decide merges incoming into stored (nil: no version stored). Neither input
// is modified and Decision.Stored shares no map with them.
//
// The winner is always the maximum by Less, so that the merge is a
// join-semilattice (commutative, associative, idempotent) whatever order
// versions arrive in. The vector clocks only classify the outcome and are
// joined into the stored version. When the clocks and Less disagree (the
// clocks say Overwrite but incoming loses, say Stale but incoming wins, or are
// equal for two different versions), which is impossible when every version
// came from Next, Less still decides and the Outcome is Conflict with rule
// RuleLWW so that the anomaly is logged.
func Decide(stored *casualdb.Version, incoming casualdb.Version) Decision {
	if stored == nil {
		return Decision{
			Outcome: Fresh,
			Apply:   true,
			Stored:  casualdb.Version{HLC: incoming.HLC, Origin: incoming.Origin, VC: Join(nil, incoming.VC)},
			Rule:    RuleFresh,
		}
	}
	wins := Less(*stored, incoming)
	winner := *stored
	if wins {
		winner = incoming
	}
	d := Decision{
		Outcome: Conflict,
		Apply:   wins,
		Stored:  casualdb.Version{HLC: winner.HLC, Origin: winner.Origin, VC: Join(stored.VC, incoming.VC)},
		Rule:    RuleLWW,
	}
	switch CompareClocks(stored.VC, incoming.VC) {
	case Before:
		if wins {
			d.Outcome, d.Rule = Overwrite, RuleCausal
		}
	case After:
		if !wins {
			d.Outcome, d.Rule = Stale, RuleStale
		}
	case Equal:
		// Equal clocks name the same write: a duplicate, unless the
		// versions differ, which only corrupt metadata can produce.
		if !wins && !Less(incoming, *stored) {
			d.Outcome, d.Rule = Stale, RuleStale
		}
	}
	return d
}
