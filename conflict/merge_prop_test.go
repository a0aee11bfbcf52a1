package conflict

import (
	"math"
	"reflect"
	"testing"

	"github.com/casualdb/casualdb"
	"pgregory.net/rapid"
)

// The simulation below tracks causality independently of the vector clocks:
// each write records the ids of every write its site had merged when it was
// made (transitively), and each replica the ids of every write it has merged.
// The properties compare Decide and the clocks against that ground truth.

// write is one version made by Next in a simulated history.
type write struct {
	id   int
	v    casualdb.Version
	deps map[int]bool // writes this one causally follows, not itself
}

// replica is one site's view of the row.
type replica struct {
	site   casualdb.SiteID
	skew   int64
	stored *casualdb.Version
	seen   map[int]bool // writes merged here, closed under deps
}

// sim is a history of writes to one row at 2 to 5 sites.
type sim struct {
	replicas []*replica
	writes   []write
}

const baseMicros = 1_700_000_000_000_000

// genSim draws a history: writes at random sites with skewed, jittered,
// non-monotonic commit clocks, interleaved with deliveries of random subsets
// of the writes made so far to random sites.
func genSim(t *rapid.T) *sim {
	n := rapid.IntRange(2, 5).Draw(t, "sites")
	names := rapid.SliceOfNDistinct(rapid.StringMatching(`[a-d]{1,2}`), n, n, rapid.ID).Draw(t, "names")
	s := &sim{}
	for _, name := range names {
		// Skews from none to an hour either way: a site far behind must
		// still win when it overwrites what it has seen.
		skew := rapid.SampledFrom([]int64{0, 0, 1, -1, 3_600_000_000, -3_600_000_000}).Draw(t, "skew")
		s.replicas = append(s.replicas, &replica{site: casualdb.SiteID(name), skew: skew, seen: map[int]bool{}})
	}
	steps := rapid.IntRange(1, 30).Draw(t, "steps")
	for range steps {
		r := s.replicas[rapid.IntRange(0, n-1).Draw(t, "site")]
		if len(s.writes) == 0 || rapid.IntRange(0, 2).Draw(t, "action") < 2 {
			commit := baseMicros + r.skew + rapid.Int64Range(-2, 2).Draw(t, "jitter")
			s.write(t, r, commit)
			continue
		}
		ids := rapid.SliceOfN(rapid.IntRange(0, len(s.writes)-1), 0, 6).Draw(t, "deliver")
		for _, id := range ids {
			s.deliver(t, r, s.writes[id])
		}
	}
	return s
}

// write makes a write at r committed at commit and merges it locally.
func (s *sim) write(t *rapid.T, r *replica, commit int64) {
	deps := make(map[int]bool, len(r.seen))
	for id := range r.seen {
		deps[id] = true
	}
	w := write{id: len(s.writes), v: Next(r.stored, r.site, commit), deps: deps}
	for _, o := range s.writes {
		if !Less(o.v, w.v) && !Less(w.v, o.v) {
			t.Fatalf("writes %d and %d share HLC and origin %v", o.id, w.id, w.v)
		}
	}
	s.writes = append(s.writes, w)
	if d := s.deliver(t, r, w); !d.Apply || (d.Outcome != Fresh && d.Outcome != Overwrite) {
		t.Fatalf("local write %v over %v: got %+v, want fresh or overwrite applied", w.v, r.stored, d)
	}
}

// deliver merges w into r with Decide and checks the decision against the
// ground truth: Stale iff r has merged w already, Overwrite iff w has seen
// everything r merged, Conflict otherwise, and Conflict iff the clocks are
// concurrent.
func (s *sim) deliver(t *rapid.T, r *replica, w write) Decision {
	d := Decide(r.stored, w.v)
	want := Conflict
	switch {
	case r.stored == nil:
		want = Fresh
	case r.seen[w.id]:
		want = Stale
	case subset(r.seen, w.deps):
		want = Overwrite
	}
	if d.Outcome != want {
		t.Fatalf("at %s deliver write %d %v %v over %v %v: got outcome %v, want %v", r.site, w.id, w.v, w.v.VC, r.stored, storedVC(r.stored), d.Outcome, want)
	}
	if r.stored != nil {
		concurrent := CompareClocks(r.stored.VC, w.v.VC) == Concurrent
		if (d.Outcome == Conflict) != concurrent {
			t.Fatalf("at %s deliver %v over %v: got outcome %v, clocks concurrent %v", r.site, w.v, r.stored, d.Outcome, concurrent)
		}
	}
	wantApply := r.stored == nil || Less(*r.stored, w.v)
	if d.Apply != wantApply {
		t.Fatalf("at %s deliver %v over %v: got apply %v, want %v", r.site, w.v, r.stored, d.Apply, wantApply)
	}
	stored := d.Stored
	r.stored = &stored
	r.seen[w.id] = true
	for id := range w.deps {
		r.seen[id] = true
	}
	return d
}

func subset(a, b map[int]bool) bool {
	for k := range a {
		if !b[k] {
			return false
		}
	}
	return true
}

func storedVC(v *casualdb.Version) casualdb.VectorClock {
	if v == nil {
		return nil
	}
	return v.VC
}

// fold merges vs in order into an empty row and returns the stored version.
func fold(vs []casualdb.Version) *casualdb.Version {
	var stored *casualdb.Version
	for _, v := range vs {
		d := Decide(stored, v)
		stored = &d.Stored
	}
	return stored
}

func TestDecide_Convergence(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		s := genSim(t)
		ids := make([]int, len(s.writes))
		for i := range ids {
			ids[i] = i
		}
		// Deliver everything everywhere, each replica in its own order
		// and with duplicates.
		for _, r := range s.replicas {
			dups := rapid.SliceOfN(rapid.IntRange(0, len(s.writes)-1), 0, 5).Draw(t, "dups")
			order := rapid.Permutation(append(append([]int(nil), ids...), dups...)).Draw(t, "order")
			for _, id := range order {
				s.deliver(t, r, s.writes[id])
			}
		}

		want := s.writes[0].v
		var wantVC casualdb.VectorClock
		for _, w := range s.writes {
			if Less(want, w.v) {
				want = w.v
			}
			wantVC = Join(wantVC, w.v.VC)
		}
		want.VC = wantVC
		for _, r := range s.replicas {
			if !reflect.DeepEqual(*r.stored, want) {
				t.Fatalf("replica %s: got %v %v, want %v %v", r.site, r.stored, r.stored.VC, want, want.VC)
			}
		}
	})
}

func TestDecide_CausalOverwriteWins(t *testing.T) {
	check := func(t *rapid.T, a, b casualdb.Version) {
		if !Less(a, b) {
			t.Fatalf("Less(%v, %v) = false, want true for causal successor", a, b)
		}
		if got := CompareClocks(a.VC, b.VC); got != Before {
			t.Fatalf("CompareClocks(%v, %v) = %v, want before", a.VC, b.VC, got)
		}
		d := Decide(&a, b)
		if !d.Apply || d.Outcome != Overwrite || d.Rule != RuleCausal {
			t.Fatalf("Decide(%v, %v) = %+v, want applied overwrite by %q", a, b, d, RuleCausal)
		}
	}
	t.Run("history", func(t *testing.T) {
		rapid.Check(t, func(t *rapid.T) {
			s := genSim(t)
			for _, b := range s.writes {
				for id := range b.deps {
					check(t, s.writes[id].v, b.v)
				}
			}
		})
	})
	t.Run("arbitrary versions", func(t *testing.T) {
		rapid.Check(t, func(t *rapid.T) {
			a := genVersion().Draw(t, "a")
			stored := rapid.Ptr(genVersion(), true).Draw(t, "stored")
			site := genSite().Draw(t, "site")
			commit := rapid.OneOf(rapid.Int64Range(0, 30), rapid.Int64()).Draw(t, "commit")
			merged := Decide(stored, a).Stored
			b := Next(&merged, site, commit)
			check(t, a, b)
			check(t, merged, b)
		})
	})
}

func genSite() *rapid.Generator[casualdb.SiteID] {
	return rapid.SampledFrom([]casualdb.SiteID{"a", "b", "c"})
}

// genVersion draws versions from small domains, so that equal walls, equal
// HLCs and equal clocks are common, plus an exhausted logical counter.
func genVersion() *rapid.Generator[casualdb.Version] {
	return rapid.Custom(func(t *rapid.T) casualdb.Version {
		return casualdb.Version{
			HLC: casualdb.HLC{
				Wall:    rapid.Int64Range(0, 20).Draw(t, "wall"),
				Logical: rapid.SampledFrom([]uint32{0, 1, 2, math.MaxUint32}).Draw(t, "logical"),
			},
			Origin: genSite().Draw(t, "origin"),
			VC:     rapid.MapOfN(genSite(), rapid.Uint64Range(0, 3), 0, 3).Draw(t, "vc"),
		}
	})
}

func TestDecide_Semilattice(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		vs := rapid.SliceOfN(genVersion(), 1, 8).Draw(t, "versions")
		want := vs[0]
		var wantVC casualdb.VectorClock
		for _, v := range vs {
			if Less(want, v) {
				want = v
			}
			wantVC = Join(wantVC, v.VC)
		}
		want.VC = wantVC

		got := fold(vs)
		if !reflect.DeepEqual(*got, want) {
			t.Fatalf("fold: got %v %v, want max by Less %v with joined clock %v", got, got.VC, want, want.VC)
		}
		perm := rapid.Permutation(vs).Draw(t, "permutation")
		if p := fold(perm); !reflect.DeepEqual(p, got) {
			t.Fatalf("fold of permutation: got %v %v, want %v %v", p, p.VC, got, got.VC)
		}
		if d := fold(append(append([]casualdb.Version(nil), vs...), perm...)); !reflect.DeepEqual(d, got) {
			t.Fatalf("fold with every version twice: got %v %v, want %v %v", d, d.VC, got, got.VC)
		}
		for _, v := range vs {
			if d := Decide(got, v); !reflect.DeepEqual(d.Stored, *got) || d.Apply {
				t.Fatalf("Decide(%v, %v) again: got %+v, want stored unchanged and not applied", got, v, d)
			}
		}
		// Associative: merging the folds of two halves, either way round,
		// is the fold of the whole.
		cut := rapid.IntRange(0, len(vs)).Draw(t, "cut")
		left, right := fold(vs[:cut]), fold(vs[cut:])
		if left != nil && right != nil {
			for _, m := range []casualdb.Version{Decide(left, *right).Stored, Decide(right, *left).Stored} {
				if !reflect.DeepEqual(m, *got) {
					t.Fatalf("merge of halves %v %v and %v %v: got %v %v, want %v %v", left, left.VC, right, right.VC, m, m.VC, got, got.VC)
				}
			}
		}
	})
}

func TestDecide_ConflictIffConcurrent(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		// genSim already checks every delivery against a replica's merged
		// state; here every pair of writes is checked directly.
		s := genSim(t)
		for _, a := range s.writes {
			for _, b := range s.writes {
				concurrent := a.id != b.id && !a.deps[b.id] && !b.deps[a.id]
				if got := CompareClocks(a.v.VC, b.v.VC) == Concurrent; got != concurrent {
					t.Fatalf("CompareClocks(%v, %v) concurrent = %v, want %v", a.v.VC, b.v.VC, got, concurrent)
				}
				d := Decide(&a.v, b.v)
				if got := d.Outcome == Conflict; got != concurrent {
					t.Fatalf("Decide(%v %v, %v %v) = %+v, want conflict %v", a.v, a.v.VC, b.v, b.v.VC, d, concurrent)
				}
				if concurrent && d.Rule != RuleLWW {
					t.Fatalf("Decide(%v, %v) rule = %q, want %q", a.v, b.v, d.Rule, RuleLWW)
				}
			}
		}
	})
}
