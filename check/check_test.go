package check

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
)

// fakeSite is a site held in memory: the logic of Run without databases.
type fakeSite struct {
	name     casualdb.SiteID
	progress []Progress // successive answers; the last one repeats
	calls    int
	entries  []Entry // every entry in bucket 0
	columns  string
	repairs  []Action
	relisted []Entry // what a listing by key returns (nil: entries): the rows as they are when repair re-reads them
}

func (f *fakeSite) Name() casualdb.SiteID { return f.name }

func (f *fakeSite) Progress(context.Context) (Progress, error) {
	p := f.progress[min(f.calls, len(f.progress)-1)]
	f.calls++
	return p, nil
}

func (f *fakeSite) Summarize(_ context.Context, _ string, n int) (Summary, error) {
	s := Summary{Buckets: make([]Bucket, n)}
	s.Buckets[0] = Bucket{N: int64(len(f.entries)), Sum: "0"}
	for _, e := range f.entries {
		s.Buckets[0].Sum += e.Key + e.Image
		if e.Version != nil {
			s.Buckets[0].Sum += string(e.Version.Origin)
		}
	}
	s.Columns = f.columns
	s.Cost.Rows = int64(len(f.entries))
	return s, nil
}

func (f *fakeSite) Settle(context.Context) (uint32, error) { return 100, nil }

func (f *fakeSite) Entries(_ context.Context, _ string, _ int, flt Filter, _ uint32) ([]Entry, Cost, error) {
	var out []Entry
	entries := f.entries
	if len(flt.Keys) > 0 && f.relisted != nil {
		entries = f.relisted
	}
	for _, e := range entries {
		if len(flt.Keys) > 0 && slices.Contains(flt.Keys, e.Key) || len(flt.Keys) == 0 && slices.Contains(flt.Buckets, 0) {
			out = append(out, e)
		}
	}
	return out, Cost{Rows: int64(len(out))}, nil
}

func (f *fakeSite) Repair(_ context.Context, a Action) (bool, string, error) {
	f.repairs = append(f.repairs, a)
	return true, "", nil
}

func version(wall int64, origin casualdb.SiteID) *casualdb.Version {
	return &casualdb.Version{HLC: casualdb.HLC{Wall: wall}, Origin: origin}
}

// TestRun_Cut: the check waits until every site has applied the others up
// to where they had captured when it began; then a key that differs because
// a site holds a version written after that cut is in flight, and one that
// differs with versions at or below it is a difference.
func TestRun_Cut(t *testing.T) {
	behind := Progress{Epoch: "ea", LastSeq: 10, LastLSN: 1000, Applied: map[casualdb.SiteID]AppliedFrom{"b": {Seq: 3, Epoch: "eb"}}}
	caught := behind
	caught.Applied = map[casualdb.SiteID]AppliedFrom{"b": {Seq: 5, Epoch: "eb"}}
	a := &fakeSite{name: "a", progress: []Progress{behind, behind, caught}, entries: []Entry{
		{Key: `["1"]`, Present: true, Image: "x", Version: version(1, "a"), OriginLSN: 900},
		{Key: `["2"]`, Present: true, Image: "y", Version: version(2, "a"), OriginLSN: 1500}, // after a's cut
		{Key: `["3"]`, Present: true, Image: "z", Version: version(3, "b"), OriginLSN: 400},
	}}
	b := &fakeSite{name: "b", progress: []Progress{{Epoch: "eb", LastSeq: 5, LastLSN: 500, Applied: map[casualdb.SiteID]AppliedFrom{"a": {Seq: 10, Epoch: "ea"}}}}, entries: []Entry{
		{Key: `["1"]`, Present: true, Image: "x", Version: version(1, "a"), OriginLSN: 900},
		{Key: `["2"]`, Present: true, Image: "old", Version: version(1, "a"), OriginLSN: 800},
		{Key: `["3"]`, Present: true, Image: "changed", Version: version(3, "b"), OriginLSN: 400},
	}}
	rep, err := Run(context.Background(), []Site{a, b}, Options{Tables: []string{"public.t"}, Buckets: 4, CutWait: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.CutOK || a.calls < 3 {
		t.Errorf("cut reached %v after %d progress reads of a; want reached, after waiting for a to apply b up to seq 5", rep.CutOK, a.calls)
	}
	if rep.Cut["a"].Seq != 10 || rep.Cut["b"].LSN != casualdb.FormatLSN(500) {
		t.Errorf("cut %+v", rep.Cut)
	}
	tr := rep.Tables[0]
	if tr.InFlight != 1 || len(tr.Diffs) != 1 || tr.Diffs[0].Key != `["3"]` || rep.Differ != 1 || rep.Clean() {
		t.Errorf("in flight %d, diffs %+v: want key 2 in flight and key 3 differing", tr.InFlight, tr.Diffs)
	}
	if tr.Differing != 1 || rep.Cost["a"].Rows != 6 {
		t.Errorf("differing buckets %d, a read %d rows; want 1 bucket, 3 rows summed and 3 listed", tr.Differing, rep.Cost["a"].Rows)
	}
}

// TestRun_CutNotReached: a site that does not catch up within CutWait
// leaves the report marked, not failed.
func TestRun_CutNotReached(t *testing.T) {
	a := &fakeSite{name: "a", progress: []Progress{{Epoch: "ea", LastSeq: 1, Applied: map[casualdb.SiteID]AppliedFrom{}}}}
	b := &fakeSite{name: "b", progress: []Progress{{Epoch: "eb", LastSeq: 1, Applied: map[casualdb.SiteID]AppliedFrom{"a": {Seq: 1, Epoch: "ea"}}}}}
	rep, err := Run(context.Background(), []Site{a, b}, Options{Tables: []string{"public.t"}, Buckets: 2, CutWait: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if rep.CutOK || !rep.Clean() {
		t.Errorf("cut reached %v, clean %v: want not reached (a never applied b), and clean (nothing differs)", rep.CutOK, rep.Clean())
	}
}

// TestRun_RepairSkipsMovedKeys: repair re-reads the planned keys at every
// site (one listing each) and leaves alone a key a site wrote since the
// check; the others are repaired at the site Plan names.
func TestRun_RepairSkipsMovedKeys(t *testing.T) {
	v := version(1, "a")
	v.VC = casualdb.VectorClock{"a": 1}
	p := Progress{Epoch: "e", Applied: map[casualdb.SiteID]AppliedFrom{}}
	a := &fakeSite{name: "a", progress: []Progress{p}, entries: []Entry{
		{Key: `["1"]`, Present: true, Image: "orig", Version: v},
		{Key: `["2"]`, Present: true, Image: "orig", Version: v},
	}}
	b := &fakeSite{name: "b", progress: []Progress{p}, entries: []Entry{
		{Key: `["1"]`, Present: true, Image: "bypassed", Version: v},
		{Key: `["2"]`, Present: true, Image: "bypassed", Version: v},
	}}
	b.relisted = []Entry{b.entries[0], {Key: `["2"]`, Present: true, Image: "written since", Version: v}}
	rep, err := Run(context.Background(), []Site{a, b}, Options{Tables: []string{"public.t"}, Buckets: 1, Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Repairs) != 2 || !rep.Repairs[0].Done || rep.Repairs[1].Done || !strings.Contains(rep.Repairs[1].Note, "changed at site b") {
		t.Fatalf("repairs %+v: want key 1 repaired, key 2 left (b wrote it since)", rep.Repairs)
	}
	if len(a.repairs) != 1 || a.repairs[0].Key != `["1"]` || a.repairs[0].Op != "rewrite" || len(b.repairs) != 0 {
		t.Errorf("a repaired %+v, b %+v: want one rewrite of key 1 at a, the origin", a.repairs, b.repairs)
	}
}

// TestBucketLimit: a digest of more buckets than BucketLimit, or of none, is
// refused before anything is read or allocated (a peer's check request
// names the count).
func TestBucketLimit(t *testing.T) {
	for _, n := range []int{0, -1, BucketLimit + 1, 1 << 40} {
		if _, err := Summarize(t.Context(), nil, "public.t", n); err == nil || !strings.Contains(err.Error(), "buckets") {
			t.Errorf("Summarize with %d buckets: %v", n, err)
		}
		if _, _, _, err := Entries(t.Context(), nil, "public.t", n, Filter{}, 0, Page{}); err == nil || !strings.Contains(err.Error(), "buckets") {
			t.Errorf("Entries with %d buckets: %v", n, err)
		}
	}
}

// TestRemote_EntriesBounded: a peer that answers every page of a listing
// with "more", or with more entries than a page holds, ends the listing
// with an error naming it, instead of being asked until the check times out.
func TestRemote_EntriesBounded(t *testing.T) {
	defer func(n int) { maxRemoteEntries = n }(maxRemoteEntries)
	maxRemoteEntries = 5 * DefaultPageSize
	asked := 0
	endless := &Remote{Site: "x", Do: func(_ context.Context, req Request) (Response, error) {
		asked++
		es := make([]Entry, req.Page.Limit)
		for i := range es {
			es[i].Key = fmt.Sprintf(`["%d"]`, asked*req.Page.Limit+i)
		}
		return Response{Entries: es, More: true}, nil
	}}
	if _, _, err := endless.Entries(t.Context(), "public.t", 4, Filter{}, 0); err == nil || !strings.Contains(err.Error(), "site x lists more than") || asked != 6 {
		t.Errorf("endless pages: %v after %d requests, want an error after 6", err, asked)
	}
	long := &Remote{Site: "y", Do: func(_ context.Context, req Request) (Response, error) {
		return Response{Entries: make([]Entry, req.Page.Limit+1)}, nil
	}}
	if _, _, err := long.Entries(t.Context(), "public.t", 4, Filter{}, 0); err == nil || !strings.Contains(err.Error(), "for a page of") {
		t.Errorf("a page too long: %v", err)
	}
}
