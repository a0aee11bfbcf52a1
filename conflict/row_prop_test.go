package conflict

import (
	"fmt"
	"reflect"
	"testing"

	"github.com/casualdb/casualdb"
	"pgregory.net/rapid"
)

// A simulation of one row written (inserted, updated, deleted) at several
// sites, with every version delivered everywhere in causal order (never
// before a version it covers), as apply's causal delivery does.

type rowWrite struct {
	id      int
	v       casualdb.Version
	deleted bool
	deps    map[int]bool // writes merged at its site when it was made
}

type rowReplica struct {
	site   casualdb.SiteID
	skew   int64
	stored *Row
	seen   map[int]bool
}

type rowSim struct {
	policy   DeletePolicy
	replicas []*rowReplica
	writes   []rowWrite
}

func genRowSim(t *rapid.T, p DeletePolicy) *rowSim {
	n := rapid.IntRange(2, 4).Draw(t, "sites")
	s := &rowSim{policy: p}
	for i := range n {
		skew := rapid.SampledFrom([]int64{0, 0, 1, -1, 3_600_000_000, -3_600_000_000}).Draw(t, "skew")
		s.replicas = append(s.replicas, &rowReplica{site: casualdb.SiteID(rune('a' + i)), skew: skew, seen: map[int]bool{}})
	}
	steps := rapid.IntRange(1, 30).Draw(t, "steps")
	for range steps {
		r := s.replicas[rapid.IntRange(0, n-1).Draw(t, "site")]
		if len(s.writes) == 0 || rapid.IntRange(0, 2).Draw(t, "action") < 2 {
			s.write(t, r)
			continue
		}
		for range rapid.IntRange(0, 6).Draw(t, "deliveries") {
			s.deliverOne(t, r)
		}
	}
	return s
}

// write makes a local write at r: an insert where the row is absent, an
// update or a delete where it is present.
func (s *rowSim) write(t *rapid.T, r *rowReplica) {
	deleted := false
	if r.stored != nil && !r.stored.Deleted {
		deleted = rapid.IntRange(0, 2).Draw(t, "delete") == 0
	}
	var prev *casualdb.Version
	if r.stored != nil {
		prev = &r.stored.Version
	}
	commit := baseMicros + r.skew + rapid.Int64Range(-2, 2).Draw(t, "jitter")
	deps := make(map[int]bool, len(r.seen))
	for id := range r.seen {
		deps[id] = true
	}
	w := rowWrite{id: len(s.writes), v: Next(prev, r.site, commit), deleted: deleted, deps: deps}
	s.writes = append(s.writes, w)
	d := s.merge(r, w)
	if !d.Apply {
		t.Fatalf("local write %d %v (deleted %v) at %s over %+v: not applied: %+v", w.id, w.v, deleted, r.site, r.stored, d)
	}
}

// deliverOne delivers to r one write, drawn among those r has not merged
// whose dependencies it has; it reports whether there was one.
func (s *rowSim) deliverOne(t *rapid.T, r *rowReplica) bool {
	var ready []int
	for _, w := range s.writes {
		if !r.seen[w.id] && subset(w.deps, r.seen) {
			ready = append(ready, w.id)
		}
	}
	if len(ready) == 0 {
		return false
	}
	w := s.writes[rapid.SampledFrom(ready).Draw(t, "deliver")]
	s.merge(r, w)
	if rapid.IntRange(0, 4).Draw(t, "duplicate") == 0 {
		s.merge(r, w) // redelivery changes nothing
	}
	return true
}

func (s *rowSim) merge(r *rowReplica, w rowWrite) RowDecision {
	d := DecideRow(r.stored, w.v, w.deleted, s.policy)
	r.stored = &Row{Version: d.Stored, Deleted: d.Deleted, Floor: d.Floor}
	r.seen[w.id] = true
	return d
}

// expected is the row every replica must hold once it merged every write:
// under DeleteWins the alive writes are the live ones whose clock covers the
// join of every delete's clock; the row is the last-writer-wins maximum of
// those, or deleted when there is none.
func (s *rowSim) expected() (live bool, winner casualdb.Version, vc, floor casualdb.VectorClock) {
	for _, w := range s.writes {
		vc = Join(vc, w.v.VC)
		if w.deleted && s.policy == DeleteWins {
			floor = Join(floor, w.v.VC)
		}
	}
	var best *rowWrite
	for i, w := range s.writes {
		if s.policy == DeleteWins && (w.deleted || !covers(w.v.VC, floor)) {
			continue
		}
		if best == nil || Less(best.v, w.v) {
			best = &s.writes[i]
		}
	}
	if best == nil {
		return false, casualdb.Version{}, vc, floor
	}
	return !best.deleted, best.v, vc, floor
}

func checkRowConvergence(t *rapid.T, p DeletePolicy) {
	s := genRowSim(t, p)
	for _, r := range s.replicas {
		for s.deliverOne(t, r) {
		}
	}
	live, winner, vc, floor := s.expected()
	for _, r := range s.replicas {
		got := r.stored
		if got.Deleted == live {
			t.Fatalf("replica %s: deleted %v, want %v (stored %v)", r.site, got.Deleted, !live, got.Version)
		}
		if CompareClocks(got.Version.VC, vc) != Equal {
			t.Fatalf("replica %s: clock %v, want the join %v", r.site, got.Version.VC, vc)
		}
		if CompareClocks(got.Floor, floor) != Equal {
			t.Fatalf("replica %s: floor %v, want %v", r.site, got.Floor, floor)
		}
		if live && (got.Version.HLC != winner.HLC || got.Version.Origin != winner.Origin) {
			t.Fatalf("replica %s: winner %v, want %v", r.site, got.Version, winner)
		}
	}
	// Deleted rows may keep different deletes' HLCs at different sites; the
	// data (absent) and clocks agree, which is what later merges read.
	first := s.replicas[0].stored
	for _, r := range s.replicas[1:] {
		if first.Deleted {
			break
		}
		if !reflect.DeepEqual(first.Version.HLC, r.stored.Version.HLC) {
			t.Fatalf("replicas disagree: %v vs %v", first.Version, r.stored.Version)
		}
	}
}

func TestDecideRow_DeleteWinsConverges(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) { checkRowConvergence(t, DeleteWins) })
}

func TestDecideRow_LastWriterWinsConverges(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		s := genRowSim(t, LastWriterWins)
		for _, r := range s.replicas {
			for s.deliverOne(t, r) {
			}
		}
		want := s.writes[0]
		for _, w := range s.writes {
			if Less(want.v, w.v) {
				want = w
			}
		}
		for _, r := range s.replicas {
			if r.stored.Deleted != want.deleted || r.stored.Version.HLC != want.v.HLC || r.stored.Version.Origin != want.v.Origin {
				t.Fatalf("replica %s: %+v, want %v deleted %v", r.site, r.stored, want.v, want.deleted)
			}
		}
	})
}

func TestDecideRow_Examples(t *testing.T) {
	const w = baseMicros
	// b updated what a inserted, with its clock an hour ahead.
	bUpd := casualdb.Version{HLC: casualdb.HLC{Wall: w + 3_600_000_000}, Origin: "b", VC: casualdb.VectorClock{"a": 1, "b": 1}}
	// c deleted what a inserted, without seeing b's update.
	cDel := casualdb.Version{HLC: casualdb.HLC{Wall: w + 10}, Origin: "c", VC: casualdb.VectorClock{"a": 1, "c": 1}}
	// c re-inserted after its delete.
	cIns := casualdb.Version{HLC: casualdb.HLC{Wall: w + 20}, Origin: "c", VC: casualdb.VectorClock{"a": 1, "c": 2}}
	tests := []struct {
		name        string
		policy      DeletePolicy
		stored      *Row
		in          casualdb.Version
		del         bool
		wantApply   bool
		wantDeleted bool
		wantOutcome Outcome
		wantRule    string
	}{
		{"delete beats a later concurrent update", DeleteWins, &Row{Version: bUpd}, cDel, true, true, true, Conflict, RuleDeleteWins},
		{"concurrent update after the delete stays dead", DeleteWins, &Row{Version: cDel, Deleted: true, Floor: cDel.VC}, bUpd, false, false, true, Conflict, RuleDeleteWins},
		{"re-insert after the delete wins", DeleteWins, &Row{Version: casualdb.Version{HLC: cDel.HLC, Origin: "c", VC: Join(cDel.VC, bUpd.VC)}, Deleted: true, Floor: cDel.VC}, cIns, false, true, false, Overwrite, RuleCausal},
		{"lww: later update brings the row back", LastWriterWins, &Row{Version: cDel, Deleted: true}, bUpd, false, true, false, Conflict, RuleLWW},
		{"lww: earlier delete loses", LastWriterWins, &Row{Version: bUpd}, cDel, true, false, false, Conflict, RuleLWW},
		{"redelivered delete is stale", DeleteWins, &Row{Version: cDel, Deleted: true, Floor: cDel.VC}, cDel, true, false, true, Stale, RuleStale},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := DecideRow(tt.stored, tt.in, tt.del, tt.policy)
			got := fmt.Sprintf("apply=%v deleted=%v %v %s", d.Apply, d.Deleted, d.Outcome, d.Rule)
			want := fmt.Sprintf("apply=%v deleted=%v %v %s", tt.wantApply, tt.wantDeleted, tt.wantOutcome, tt.wantRule)
			if got != want {
				t.Errorf("got %s, want %s", got, want)
			}
		})
	}
}
