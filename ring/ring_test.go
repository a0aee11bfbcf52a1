package ring

import (
	"fmt"
	"math"
	"slices"
	"testing"

	"github.com/casualdb/casualdb"
	"pgregory.net/rapid"
)

func mustRing(t testing.TB, sites ...casualdb.SiteID) *Ring {
	t.Helper()
	r, err := New(Config{Sites: sites})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestNew_Errors(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"negative vnodes", Config{Sites: []casualdb.SiteID{"a"}, VNodes: -1}},
		{"empty site", Config{Sites: []casualdb.SiteID{"a", ""}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Errorf("New(%+v) = nil error, want one", tc.cfg)
			}
		})
	}
}

func TestRing_Preference(t *testing.T) {
	r := mustRing(t, "c", "a", "b", "a")
	if got := r.Sites(); fmt.Sprint(got) != "[a b c]" {
		t.Errorf("Sites() = %v, want [a b c]", got)
	}
	for _, n := range []int{0, 1, 2, 3, 5} {
		got := r.Preference("a-0/16B2D48", n)
		if want := min(n, 3); len(got) != want {
			t.Errorf("Preference(n=%d) = %v, want %d sites", n, got, want)
		}
		if len(slices.Compact(slices.Sorted(slices.Values(got)))) != len(got) {
			t.Errorf("Preference(n=%d) = %v: a site twice", n, got)
		}
	}
	if got := mustRing(t).Preference("x", 3); len(got) != 0 {
		t.Errorf("empty ring: Preference = %v, want none", got)
	}
}

func TestRing_Ownership(t *testing.T) {
	r := mustRing(t, "eu1", "us1", "ap1")
	var sum float64
	for s, share := range r.Ownership() {
		sum += share
		if share < 0.25 || share > 0.42 {
			t.Errorf("site %s owns %.3f of the ring, want about a third", s, share)
		}
	}
	if math.Abs(sum-1) > 1e-9 {
		t.Errorf("shares add up to %f, want 1", sum)
	}
	if got := mustRing(t, "solo").Ownership()["solo"]; math.Abs(got-1) > 1e-9 {
		t.Errorf("one site owns %f, want 1", got)
	}
}

func TestRing_Sloppy(t *testing.T) {
	r := mustRing(t, "a", "b", "c", "d", "e")
	id := "a-0/1000"
	pref := r.Preference(id, 3)
	all := func(casualdb.SiteID) bool { return true }
	got := r.Sloppy(id, 3, all)
	for i, p := range got {
		if p.Site != pref[i] || p.HintFor != "" {
			t.Errorf("all live: placement %d = %+v, want %s itself", i, p, pref[i])
		}
	}
	down := pref[1]
	got = r.Sloppy(id, 3, func(s casualdb.SiteID) bool { return s != down })
	if len(got) != 3 || got[1].HintFor != down || got[1].Site == down || slices.Contains(pref, got[1].Site) {
		t.Errorf("%s down: placements %+v, want a site beyond %v standing in for it", down, got, pref)
	}
	if want := r.Preference(id, 4)[3]; got[1].Site != want {
		t.Errorf("stand-in for %s is %s, want the next site clockwise, %s", down, got[1].Site, want)
	}
	none := r.Sloppy(id, 3, func(casualdb.SiteID) bool { return false })
	if len(none) != 0 {
		t.Errorf("nobody live: placements %+v, want none", none)
	}
}

func TestRing_HintHolders(t *testing.T) {
	r := mustRing(t, "a", "b", "c")
	id := "a-0/1000"
	down := func(d ...casualdb.SiteID) func(casualdb.SiteID) bool {
		return func(s casualdb.SiteID) bool { return !slices.Contains(d, s) }
	}
	// Three sites, n = 3, c down, a the origin: b keeps c's hint.
	if got := r.HintHolders(id, 3, "a", down("c")); fmt.Sprint(got) != "map[c:b]" {
		t.Errorf("c down: holders %v, want c's hint at b", got)
	}
	// The origin down too: nothing to do for it (its outbox has it).
	if got := r.HintHolders(id, 3, "a", down("a", "c")); fmt.Sprint(got) != "map[c:b]" {
		t.Errorf("a and c down: holders %v, want c's hint at b only", got)
	}
	if got := r.HintHolders(id, 3, "a", down("b", "c")); len(got) != 0 {
		t.Errorf("only the origin live: holders %v, want none", got)
	}
	if got := r.HintHolders(id, 3, "a", down()); len(got) != 0 {
		t.Errorf("all live: holders %v, want none", got)
	}
}

// TestRing_Properties checks the laws the cluster relies on, for any members
// and ids: placement does not depend on the order members are listed in;
// sloppy placements are live, distinct, keep every live member of the
// preference list, and stand in exactly for its dead members while spares
// last; adding a site moves only the ids it now takes.
func TestRing_Properties(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		names := rapid.SliceOfNDistinct(rapid.StringMatching(`[a-z][a-z0-9]{0,6}`), 1, 7, rapid.ID[string]).Draw(t, "sites")
		var sites []casualdb.SiteID
		for _, n := range names {
			sites = append(sites, casualdb.SiteID(n))
		}
		vnodes := rapid.IntRange(1, 64).Draw(t, "vnodes")
		r1, err := New(Config{Sites: sites, VNodes: vnodes})
		if err != nil {
			t.Fatal(err)
		}
		shuffled := rapid.Permutation(sites).Draw(t, "shuffled")
		r2, _ := New(Config{Sites: shuffled, VNodes: vnodes})
		id := rapid.String().Draw(t, "id")
		n := rapid.IntRange(1, 5).Draw(t, "n")
		p1, p2 := r1.Preference(id, n), r2.Preference(id, n)
		if !slices.Equal(p1, p2) {
			t.Fatalf("order of members changed the preference list: %v vs %v", p1, p2)
		}
		dead := map[casualdb.SiteID]bool{}
		for _, s := range sites {
			dead[s] = rapid.Bool().Draw(t, "dead "+string(s))
		}
		alive := func(s casualdb.SiteID) bool { return !dead[s] }
		placed := r1.Sloppy(id, n, alive)
		seen := map[casualdb.SiteID]bool{}
		hinted := map[casualdb.SiteID]bool{}
		for _, p := range placed {
			if dead[p.Site] || seen[p.Site] {
				t.Fatalf("placement %+v: dead or repeated (placements %+v)", p, placed)
			}
			seen[p.Site] = true
			if p.HintFor != "" {
				if !dead[p.HintFor] || !slices.Contains(p1, p.HintFor) || slices.Contains(p1, p.Site) {
					t.Fatalf("hint %+v: must stand in for a dead member of %v from outside it", p, p1)
				}
				hinted[p.HintFor] = true
			}
		}
		live := 0
		for _, s := range sites {
			if !dead[s] {
				live++
			}
		}
		for _, s := range p1 {
			if !dead[s] && !seen[s] {
				t.Fatalf("live member %s of %v not placed: %+v", s, p1, placed)
			}
		}
		if want := min(n, len(sites), live); len(placed) != want {
			t.Fatalf("%d placements %+v, want %d (n=%d, %d live)", len(placed), placed, want, n, live)
		}

		origin := sites[rapid.IntRange(0, len(sites)-1).Draw(t, "origin")]
		holders := r1.HintHolders(id, n, origin, alive)
		anyHolder := false
		for _, s := range sites {
			anyHolder = anyHolder || (!dead[s] && s != origin)
		}
		for _, x := range p1 {
			h, ok := holders[x]
			switch {
			case x == origin || !dead[x]:
				if ok {
					t.Fatalf("hint holder %s for %s, which is live or the origin", h, x)
				}
			case !ok && anyHolder:
				t.Fatalf("down member %s of %v has no hint holder (origin %s, dead %v)", x, p1, origin, dead)
			case ok && (dead[h] || h == origin || h == x):
				t.Fatalf("hint for %s held by %s: dead, the origin or itself", x, h)
			}
		}

		// Consistency: with one more site, an id's first site either stays
		// or becomes the new site.
		extra := casualdb.SiteID("zz-new")
		r3, _ := New(Config{Sites: append(slices.Clone(sites), extra), VNodes: vnodes})
		before, after := r1.Preference(id, 1)[0], r3.Preference(id, 1)[0]
		if after != before && after != extra {
			t.Fatalf("adding %s moved id %q from %s to %s", extra, id, before, after)
		}
	})
}
