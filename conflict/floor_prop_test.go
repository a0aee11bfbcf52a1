package conflict

import (
	"fmt"
	"testing"

	"github.com/casualdb/casualdb"
	"pgregory.net/rapid"
)

// A simulation of a few rows of one table written (inserted, updated,
// deleted) at several sites with skewed clocks, delivered in causal order as
// apply delivers them, where each site collects tombstones at moments of its
// own, by meta.CollectTombstones' rule: a row's tombstone goes from a site
// once every delete merged into the row's floor is stable (every site has
// merged it, and this site has merged every write that does not follow it).
// What the sites do about it is what capture and apply do: a site that
// collects keeps the table's collected floor (CollectFloor); a local write to
// a row with no stored version starts from it (Start); a site that still
// holds a row's floor joins it into a write whose transaction had seen its
// deletes (SawDeletes, SeenFloor); and a site with nothing stored keeps its
// own counter from the floor in the row's clock. With useFloor false the
// sites do none of that (the behaviour before), and the same check fails
// within a few runs: a re-insert after an uneven collection lives at some
// sites only.

type gcWrite struct {
	id      int
	key     int
	v       casualdb.Version
	deleted bool
	deps    map[int]bool // every write (any row) merged at its site when it was made
	// lsn and siteDeps are what a transaction carries: its commit LSN at
	// its origin (id+1 here: a site's writes are numbered in its order)
	// and, per site, the LSN of the last write of that site merged at its
	// origin when it was made (casualdb.Tx.Deps).
	lsn      uint64
	siteDeps map[casualdb.SiteID]uint64
}

type gcReplica struct {
	site  casualdb.SiteID
	skew  int64
	rows  map[int]*Row
	floor *casualdb.Version // the table's collected floor; nil before any collection
	seen  map[int]bool
	// dels is, per row and per site, the LSN of the last delete of that
	// site merged into the row's floor here (row_version.floor_lsns): what
	// collection and SawDeletes check.
	dels map[int]map[casualdb.SiteID]uint64
}

type gcSim struct {
	policy   DeletePolicy
	useFloor bool // false: the behaviour before collected floors
	logf     func(format string, args ...any)
	keys     int
	now      int64
	replicas []*gcReplica
	writes   []gcWrite
}

func genGCSim(t *rapid.T, p DeletePolicy, useFloor bool) *gcSim {
	n := rapid.IntRange(2, 4).Draw(t, "sites")
	s := &gcSim{policy: p, useFloor: useFloor, keys: rapid.IntRange(1, 3).Draw(t, "keys"), now: baseMicros, logf: t.Logf}
	for i := range n {
		skew := rapid.SampledFrom([]int64{0, 0, 1, -1, 3_600_000_000, -3_600_000_000}).Draw(t, "skew")
		s.replicas = append(s.replicas, &gcReplica{site: casualdb.SiteID(rune('a' + i)), skew: skew,
			rows: map[int]*Row{}, seen: map[int]bool{}, dels: map[int]map[casualdb.SiteID]uint64{}})
	}
	for range rapid.IntRange(1, 40).Draw(t, "steps") {
		s.now += rapid.Int64Range(0, 1000).Draw(t, "tick")
		r := s.replicas[rapid.IntRange(0, n-1).Draw(t, "site")]
		switch a := rapid.IntRange(0, 5).Draw(t, "action"); {
		case a < 3 || len(s.writes) == 0:
			s.write(t, r, rapid.IntRange(0, s.keys-1).Draw(t, "key"))
		case a < 5:
			for range rapid.IntRange(0, 6).Draw(t, "deliveries") {
				s.deliverOne(t, r)
			}
		default:
			s.collect(t, r)
		}
	}
	return s
}

// write makes a local write of row key at r: an insert where the row is
// absent, an update or a delete where it is present.
func (s *gcSim) write(t *rapid.T, r *gcReplica, key int) {
	stored := r.rows[key]
	deleted := false
	if stored != nil && !stored.Deleted {
		deleted = rapid.IntRange(0, 1).Draw(t, "delete") == 0
	}
	var prev *casualdb.Version
	switch {
	case stored != nil:
		prev = &stored.Version
	case s.useFloor:
		prev = Start(r.floor, r.site)
	}
	commit := s.now + r.skew + rapid.Int64Range(-2, 2).Draw(t, "jitter")
	deps := make(map[int]bool, len(r.seen))
	siteDeps := map[casualdb.SiteID]uint64{}
	for id := range r.seen {
		deps[id] = true
		if o := s.writes[id]; o.v.Origin != r.site {
			siteDeps[o.v.Origin] = max(siteDeps[o.v.Origin], o.lsn)
		}
	}
	id := len(s.writes)
	w := gcWrite{id: id, key: key, v: Next(prev, r.site, commit), deleted: deleted, deps: deps, lsn: uint64(id + 1), siteDeps: siteDeps}
	s.writes = append(s.writes, w)
	if d := s.merge(r, w); !d.Apply {
		t.Fatalf("local write %d %v (deleted %v) at %s over %+v: not applied: %+v", w.id, w.v, deleted, r.site, stored, d)
	}
}

// deliverOne delivers to r one write it has not merged whose dependencies
// it has; it reports whether there was one.
func (s *gcSim) deliverOne(t *rapid.T, r *gcReplica) bool {
	var ready []int
	for _, w := range s.writes {
		if !r.seen[w.id] && subset(w.deps, r.seen) {
			ready = append(ready, w.id)
		}
	}
	if len(ready) == 0 {
		return false
	}
	s.merge(r, s.writes[rapid.SampledFrom(ready).Draw(t, "deliver")])
	return true
}

func (s *gcSim) merge(r *gcReplica, w gcWrite) RowDecision {
	in := w.v
	if st := r.rows[w.key]; st != nil && s.useFloor && SawDeletes(r.dels[w.key], w.v.Origin, w.lsn, w.siteDeps) {
		in = SeenFloor(st, in)
	}
	d := DecideRow(r.rows[w.key], in, w.deleted, s.policy)
	if r.rows[w.key] == nil && r.floor != nil && s.useFloor {
		// As apply does: the row's clock keeps this site's counter.
		d.Stored.VC = Join(d.Stored.VC, casualdb.VectorClock{r.site: r.floor.VC[r.site]})
	}
	s.logf("%s merges write %d (row %d, %v, deleted %v): %v %s apply=%v -> %v deleted %v floor %v",
		r.site, w.id, w.key, w.v, w.deleted, d.Outcome, d.Rule, d.Apply, d.Stored, d.Deleted, d.Floor)
	r.rows[w.key] = &Row{Version: d.Stored, Deleted: d.Deleted, Floor: d.Floor}
	if w.deleted {
		r.dels[w.key] = JoinFloorLSNs(r.dels[w.key], map[casualdb.SiteID]uint64{w.v.Origin: w.lsn})
	}
	r.seen[w.id] = true
	return d
}

// stable reports whether r may collect the tombstone of key: for every
// delete merged into the row's floor here (the last of each site stands for
// the earlier ones), every site has merged it and r has merged every write
// (of any row) that does not follow it. That is what
// meta.CollectTombstones checks with the sites' progress and the row's
// floor_lsns: each site has seen the delete, and everything it wrote before
// seeing it is applied at r. Then every write still to come here saw every
// delete of the floor.
func (s *gcSim) stable(r *gcReplica, key int) bool {
	st := r.rows[key]
	if st == nil || !st.Deleted {
		return false
	}
	for _, lsn := range r.dels[key] {
		del := int(lsn - 1)
		for _, o := range s.replicas {
			if !o.seen[del] {
				return false
			}
		}
		for _, w := range s.writes {
			if w.id != del && !w.deps[del] && !r.seen[w.id] {
				return false
			}
		}
	}
	return true
}

// collect removes, at r, some of the tombstones it may collect.
func (s *gcSim) collect(t *rapid.T, r *gcReplica) {
	for key := range s.keys {
		if s.stable(r, key) && rapid.Bool().Draw(t, "collect") {
			s.collectRow(r, key)
		}
	}
}

func (s *gcSim) collectRow(r *gcReplica, key int) {
	var f casualdb.Version
	if r.floor != nil {
		f = *r.floor
	}
	f = CollectFloor(f, *r.rows[key])
	s.logf("%s collects row %d (%v floor %v): table floor %v", r.site, key, r.rows[key].Version, r.rows[key].Floor, f)
	r.floor = &f
	delete(r.rows, key)
	delete(r.dels, key)
}

// state renders what r holds of row key for comparison: absent (deleted or
// collected), or the stamp of the live version.
func (r *gcReplica) state(key int) string {
	st := r.rows[key]
	if st == nil || st.Deleted {
		return "absent"
	}
	return fmt.Sprintf("%v", st.Version.Stamp())
}

// checkGCConvergence delivers everything everywhere, collects what each
// site may (at random, then everything), and checks that every site holds
// the same rows, and that a row's last write, when it followed every other
// write of the row, decides it.
func checkGCConvergence(t *rapid.T, p DeletePolicy, useFloor bool) {
	s := genGCSim(t, p, useFloor)
	order := rapid.Permutation(s.replicas).Draw(t, "order")
	for _, r := range order {
		for s.deliverOne(t, r) {
		}
		s.collect(t, r)
	}
	for _, r := range s.replicas {
		for key := range s.keys {
			if s.stable(r, key) {
				s.collectRow(r, key)
			}
		}
	}
	for key := range s.keys {
		var states []string
		for _, r := range s.replicas {
			states = append(states, string(r.site)+":"+r.state(key))
		}
		first := s.replicas[0].state(key)
		for _, r := range s.replicas[1:] {
			if r.state(key) != first {
				t.Fatalf("row %d: sites disagree: %v", key, states)
			}
		}
		// The last write of the row, when it had seen every other write of
		// the row, is what every site holds.
		var last *gcWrite
		for i, w := range s.writes {
			if w.key == key {
				last = &s.writes[i]
			}
		}
		if last == nil {
			continue
		}
		followsAll := true
		for _, w := range s.writes {
			if w.key == key && w.id != last.id && !last.deps[w.id] {
				followsAll = false
			}
		}
		want := "absent"
		if !last.deleted {
			want = fmt.Sprintf("%v", last.v.Stamp())
		}
		if followsAll && first != want {
			t.Fatalf("row %d: its last write %d (%v, deleted %v) saw every other, but the sites hold %v", key, last.id, last.v, last.deleted, states)
		}
	}
}

// TestCollectFloor_Converges: with collected floors, every site ends with
// the same rows whatever the delivery order and whichever site collected
// which tombstone when, and a write that saw everything before it (a
// re-insert after a delete, say) is never lost.
func TestCollectFloor_Converges(t *testing.T) {
	for _, p := range []DeletePolicy{DeleteWins, LastWriterWins} {
		t.Run(p.String(), func(t *testing.T) {
			rapid.Check(t, func(t *rapid.T) { checkGCConvergence(t, p, true) })
		})
	}
}

// TestCollectFloor_ReinsertAfterUnevenCollection is issue 12's divergence
// in two sites: a collected the tombstone of a row b still holds, and
// re-inserts it. From a fresh clock and a's own clock the re-insert is dead
// at b (delete wins) or older than b's delete (last-writer-wins, b's clock
// an hour ahead). Stamped above a's floor, and judged at b by what its
// transaction had applied, it wins at both.
func TestCollectFloor_ReinsertAfterUnevenCollection(t *testing.T) {
	const hour = 3_600_000_000
	ins := Next(nil, "a", baseMicros)
	del := Next(&ins, "b", baseMicros+hour) // b's clock is an hour ahead; commit LSN 7 at b
	held := Row{Version: del, Deleted: true, Floor: del.VC}
	floorLSNs := map[casualdb.SiteID]uint64{"b": 7}
	floor := CollectFloor(casualdb.Version{}, held)
	deps := map[casualdb.SiteID]uint64{"b": 7} // a had applied b's delete
	for _, p := range []DeletePolicy{DeleteWins, LastWriterWins} {
		t.Run(p.String(), func(t *testing.T) {
			fresh := Next(nil, "a", baseMicros+10)
			if d := DecideRow(&held, fresh, false, p); d.Apply {
				t.Errorf("fresh clock %v over b's tombstone %v: applied, want lost (the divergence)", fresh, del)
			}
			again := Next(Start(&floor, "a"), "a", baseMicros+10)
			if !SawDeletes(floorLSNs, "a", 100, deps) {
				t.Fatal("SawDeletes: false for a transaction that had applied the delete")
			}
			d := DecideRow(&held, SeenFloor(&held, again), false, p)
			if !d.Apply || d.Deleted || d.Outcome != Overwrite {
				t.Errorf("re-insert from the floor %v over b's tombstone: %+v; want an overwrite that applies", again, d)
			}
			if got := DecideRow(nil, again, false, p); !got.Apply {
				t.Errorf("re-insert at a (nothing stored): %+v", got)
			}
		})
	}
}

func TestCollectFloor(t *testing.T) {
	f := CollectFloor(casualdb.Version{}, Row{
		Version: casualdb.Version{HLC: casualdb.HLC{Wall: 5, Logical: 1}, Origin: "b", VC: casualdb.VectorClock{"a": 1, "b": 2}},
		Deleted: true, Floor: casualdb.VectorClock{"a": 1, "c": 1}})
	f = CollectFloor(f, Row{Version: casualdb.Version{HLC: casualdb.HLC{Wall: 4}, Origin: "c", VC: casualdb.VectorClock{"a": 3}}, Deleted: true})
	if want := (casualdb.HLC{Wall: 5, Logical: 1}); f.HLC != want || f.Origin != "" {
		t.Errorf("floor stamp %v %q, want %v and no origin", f.HLC, f.Origin, want)
	}
	if want := (casualdb.VectorClock{"a": 3, "b": 2, "c": 1}); CompareClocks(f.VC, want) != Equal {
		t.Errorf("floor clock %v, want %v", f.VC, want)
	}
	if Start(nil, "a") != nil || Start(&casualdb.Version{}, "a") != nil {
		t.Error("Start of no floor is not nil")
	}
	// a's write starts above the floor, after a's counter 3, and claims
	// nothing of b's and c's writes.
	if v := Next(Start(&f, "a"), "a", 3); v.HLC.Compare(f.HLC) <= 0 || CompareClocks(v.VC, casualdb.VectorClock{"a": 4}) != Equal {
		t.Errorf("Next from the floor %v = %v; want above it with clock {a:4}", f, v)
	}
	if v := Next(Start(&f, "d"), "d", 3); CompareClocks(v.VC, casualdb.VectorClock{"d": 1}) != Equal {
		t.Errorf("Next at d from the floor %v = %v; want clock {d:1}", f, v)
	}
	if f.VC["a"] != 3 {
		t.Error("Start shares the floor's clock")
	}
}

func TestSawDeletes(t *testing.T) {
	lsns := map[casualdb.SiteID]uint64{"a": 10, "b": 20}
	tests := []struct {
		name   string
		origin casualdb.SiteID
		lsn    uint64
		deps   map[casualdb.SiteID]uint64
		want   bool
	}{
		{"saw both", "c", 5, map[casualdb.SiteID]uint64{"a": 10, "b": 25}, true},
		{"missed b's", "c", 5, map[casualdb.SiteID]uint64{"a": 10, "b": 19}, false},
		{"its own delete before it", "a", 11, map[casualdb.SiteID]uint64{"b": 20}, true},
		{"its own delete after it", "a", 9, map[casualdb.SiteID]uint64{"b": 20}, false},
		{"no deps", "c", 5, nil, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SawDeletes(lsns, tt.origin, tt.lsn, tt.deps); got != tt.want {
				t.Errorf("SawDeletes = %v, want %v", got, tt.want)
			}
		})
	}
	if SawDeletes(nil, "c", 5, map[casualdb.SiteID]uint64{"a": 99}) {
		t.Error("SawDeletes of no (or unknown) deletes is true")
	}
	stored := &Row{Version: casualdb.Version{VC: casualdb.VectorClock{"a": 2, "b": 1}}, Deleted: true, Floor: casualdb.VectorClock{"a": 2}}
	in := casualdb.Version{HLC: casualdb.HLC{Wall: 9}, Origin: "c", VC: casualdb.VectorClock{"c": 1}}
	if got := SeenFloor(stored, in); CompareClocks(got.VC, casualdb.VectorClock{"a": 2, "c": 1}) != Equal || len(in.VC) != 1 {
		t.Errorf("SeenFloor = %v (incoming now %v); want the floor joined into a copy", got.VC, in.VC)
	}
}
