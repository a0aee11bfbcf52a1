package conflict

import "github.com/casualdb/casualdb"

// DeletePolicy says what happens when one site deletes a row while another
// updates it concurrently (neither saw the other's write).
type DeletePolicy uint8

const (
	// DeleteWins, the default: a delete beats every write that did not see
	// it, whatever the clocks say, so a late or concurrent update never
	// brings a deleted row back. A write made after seeing the delete (a
	// re-insert) is not concurrent with it and wins as usual.
	DeleteWins DeletePolicy = iota
	// LastWriterWins: deletes are versions like any other; a concurrent
	// update with a later HLC than the delete brings the row back.
	LastWriterWins
)

// String returns "delete_wins" or "lww", the names the configuration uses.
func (p DeletePolicy) String() string {
	if p == LastWriterWins {
		return "lww"
	}
	return "delete_wins"
}

// RuleDeleteWins names decisions where a delete beat a concurrent write that
// last-writer-wins alone would have kept.
const RuleDeleteWins = "delete_wins"

// Row is what a site stores about one row: the version of its current
// state, whether that state is deleted, and (DeleteWins) the join of the
// vector clocks of every delete merged, the row's floor.
//
// Under DeleteWins a live version is alive when its clock covers the floor
// (it saw every delete merged so far) and dead otherwise. Version is the
// last-writer-wins maximum of the alive versions merged, or the delete that
// killed them when none is alive, with VC always the join of every clock
// merged.
type Row struct {
	Version casualdb.Version
	Deleted bool
	Floor   casualdb.VectorClock
}

// RowDecision is a Decision for a whole row: Apply says whether to write the
// incoming image (or delete the row, for an incoming delete); Deleted and
// Floor are the row's state after the merge, to be stored with Stored.
type RowDecision struct {
	Decision
	Deleted bool
	Floor   casualdb.VectorClock
}

// DecideRow merges an incoming version (a delete when deleted) into the
// stored state of a row (nil: nothing stored).
//
// Under LastWriterWins it is Decide, with the deleted flag following the
// winner. Under DeleteWins the merge is deterministic, and every site that
// merged the same versions holds the same row, provided that versions arrive
// in causal order: a version never before one its clock covers. Apply's
// causal delivery guarantees that. (Without it a delete could arrive after a
// re-insert that followed it, and the re-insert, stored as dead meanwhile,
// would be lost at that site.)
func DecideRow(stored *Row, incoming casualdb.Version, deleted bool, p DeletePolicy) RowDecision {
	if p == LastWriterWins {
		var sv *casualdb.Version
		if stored != nil {
			sv = &stored.Version
		}
		d := Decide(sv, incoming)
		out := RowDecision{Decision: d, Deleted: deleted}
		if stored != nil {
			out.Floor = stored.Floor
			if !d.Apply {
				out.Deleted = stored.Deleted
			}
		}
		if deleted {
			// Kept under this policy too, so that a table can change policy.
			out.Floor = Join(out.Floor, incoming.VC)
		}
		return out
	}
	if stored == nil {
		d := Decide(nil, incoming)
		out := RowDecision{Decision: d, Deleted: deleted}
		if deleted {
			out.Floor = Join(nil, incoming.VC)
		}
		return out
	}
	joined := Join(stored.Version.VC, incoming.VC)
	order := CompareClocks(stored.Version.VC, incoming.VC)
	// keep leaves the row as it is, with the incoming clock merged.
	keep := func(outcome Outcome, rule string, floor casualdb.VectorClock) RowDecision {
		v := stored.Version
		v.VC = joined
		return RowDecision{Decision: Decision{Outcome: outcome, Stored: v, Rule: rule}, Deleted: stored.Deleted, Floor: floor}
	}
	take := func(outcome Outcome, rule string, floor casualdb.VectorClock) RowDecision {
		return RowDecision{
			Decision: Decision{Outcome: outcome, Apply: true, Stored: casualdb.Version{HLC: incoming.HLC, Origin: incoming.Origin, VC: joined}, Rule: rule},
			Deleted:  deleted,
			Floor:    floor,
		}
	}
	if order == After || order == Equal {
		// Already merged, or superseded by what was: nothing changes.
		floor := stored.Floor
		if deleted {
			floor = Join(floor, incoming.VC)
		}
		return keep(Stale, RuleStale, floor)
	}
	if deleted {
		floor := Join(stored.Floor, incoming.VC)
		switch {
		case stored.Deleted:
			// Two deletes: the row stays deleted; keep the later one.
			if Less(stored.Version, incoming) {
				return take(outcomeFor(order), ruleFor(order), floor)
			}
			return keep(outcomeFor(order), ruleFor(order), floor)
		case order == Before:
			// The delete saw the stored write: an ordinary overwrite.
			return take(Overwrite, RuleCausal, floor)
		default:
			// The delete did not see the stored write: that write dies.
			rule := RuleLWW
			if Less(incoming, stored.Version) {
				rule = RuleDeleteWins
			}
			return take(Conflict, rule, floor)
		}
	}
	if !covers(incoming.VC, stored.Floor) {
		// A write that did not see a delete merged here: dead.
		return keep(Conflict, RuleDeleteWins, stored.Floor)
	}
	if stored.Deleted {
		// Alive, so it saw every delete: it brings the row back. (Writes
		// it did not see were killed by those deletes, and logged then.)
		return take(Overwrite, RuleCausal, stored.Floor)
	}
	d := Decide(&stored.Version, incoming)
	return RowDecision{Decision: d, Deleted: !d.Apply && stored.Deleted, Floor: stored.Floor}
}

// Alive reports whether a write with clock vc is alive in a row whose delete
// floor is floor under policy p: under DeleteWins, whether it saw every
// delete merged; under LastWriterWins always.
func Alive(vc, floor casualdb.VectorClock, p DeletePolicy) bool {
	return p == LastWriterWins || covers(vc, floor)
}

// covers reports whether clock a has seen everything b has.
func covers(a, b casualdb.VectorClock) bool {
	o := CompareClocks(b, a)
	return o == Before || o == Equal
}

func outcomeFor(o Ordering) Outcome {
	if o == Before {
		return Overwrite
	}
	return Conflict
}

func ruleFor(o Ordering) string {
	if o == Before {
		return RuleCausal
	}
	return RuleLWW
}
