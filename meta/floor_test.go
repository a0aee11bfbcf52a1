package meta_test

import (
	"testing"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
)

// TestCollectTombstones_Floors checks what tombstone collection and
// truncation keep of what they remove (the collected floor), the deletes a
// row's floor names (floor_lsns, joined on every save) and that every one
// of them must be stable before the tombstone goes.
func TestCollectTombstones_Floors(t *testing.T) {
	conn, ctx := installed(t)
	// Installing again over the tables (an upgrade) changes nothing.
	if err := meta.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	k1 := meta.RowKey{Table: "public.t", Key: `["1"]`}
	k2 := meta.RowKey{Table: "public.t", Key: `["2"]`}
	vc := func(a, b uint64) casualdb.VectorClock { return casualdb.VectorClock{"a": a, "b": b} }
	save := func(vs map[meta.RowKey]meta.RowVersion) {
		t.Helper()
		if err := meta.SaveVersions(ctx, conn, vs); err != nil {
			t.Fatal(err)
		}
	}
	floorLSNs := func(k meta.RowKey) map[casualdb.SiteID]uint64 {
		t.Helper()
		vs, err := meta.LoadVersions(ctx, conn, []meta.RowKey{k})
		if err != nil {
			t.Fatal(err)
		}
		return vs[k].FloorLSNs
	}
	// Key 1: b's delete (b LSN 50), then a's re-insert and a's delete (a
	// LSN 300): the saves name only their own delete; the row keeps both.
	save(map[meta.RowKey]meta.RowVersion{k1: {Version: casualdb.Version{HLC: casualdb.HLC{Wall: 10}, Origin: "b", VC: vc(1, 1)},
		Deleted: true, Floor: vc(1, 1), OriginLSN: 50, FloorLSNs: map[casualdb.SiteID]uint64{"b": 50}}})
	save(map[meta.RowKey]meta.RowVersion{k1: {Version: casualdb.Version{HLC: casualdb.HLC{Wall: 20}, Origin: "a", VC: vc(2, 1)},
		Floor: vc(1, 1), OriginLSN: 200}})
	save(map[meta.RowKey]meta.RowVersion{k1: {Version: casualdb.Version{HLC: casualdb.HLC{Wall: 30, Logical: 2}, Origin: "a", VC: vc(3, 1)},
		Deleted: true, Floor: vc(3, 1), OriginLSN: 300, FloorLSNs: map[casualdb.SiteID]uint64{"a": 300}}})
	if got := floorLSNs(k1); len(got) != 2 || got["a"] != 300 || got["b"] != 50 {
		t.Fatalf("floor LSNs of key 1: %v, want a 300 and b 50", got)
	}
	// Key 2: a floor recorded without its deletes (an earlier version):
	// they stay unknown, even when a later save names one.
	if _, err := conn.Exec(ctx, `INSERT INTO casualdb.row_version (tbl, key, hlc_wall, hlc_logical, origin, vclock, deleted, floor, origin_lsn)
		VALUES ('public.t', '["2"]', 5, 0, 'b', '{"b": 4}', true, '{"b": 4}', 40)`); err != nil {
		t.Fatal(err)
	}
	save(map[meta.RowKey]meta.RowVersion{k2: {Version: casualdb.Version{HLC: casualdb.HLC{Wall: 6}, Origin: "a", VC: casualdb.VectorClock{"a": 1, "b": 4}},
		Deleted: true, Floor: casualdb.VectorClock{"a": 1, "b": 4}, OriginLSN: 60, FloorLSNs: map[casualdb.SiteID]uint64{"a": 60}}})
	if got := floorLSNs(k2); got != nil {
		t.Fatalf("floor LSNs of key 2: %v, want unknown", got)
	}

	sites := []casualdb.SiteID{"a", "b", "c"}
	progress := func(origin casualdb.SiteID, deps map[casualdb.SiteID]uint64) {
		t.Helper()
		if err := meta.SaveProgress(ctx, conn, origin, meta.Progress{Seq: 1, LSN: 1, Deps: deps}); err != nil {
			t.Fatal(err)
		}
	}
	collect := func() int64 {
		t.Helper()
		n, err := meta.CollectTombstones(ctx, conn, sites, "a")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// c has seen a's deletes but not b's first one: key 1 stays (its floor
	// names b's delete), key 2 goes (only its recorded delete is known).
	progress("b", map[casualdb.SiteID]uint64{"a": 300})
	progress("c", map[casualdb.SiteID]uint64{"a": 300, "b": 49})
	if n := collect(); n != 1 {
		t.Fatalf("collected %d, want 1 (key 2)", n)
	}
	progress("c", map[casualdb.SiteID]uint64{"a": 300, "b": 50})
	if n := collect(); n != 1 {
		t.Fatalf("collected %d once c has seen b's delete, want 1 (key 1)", n)
	}
	floors, err := meta.LoadFloors(ctx, conn, []string{"public.t", "public.u"})
	if err != nil {
		t.Fatal(err)
	}
	f, ok := floors["public.t"]
	if !ok || len(floors) != 1 || f.HLC != (casualdb.HLC{Wall: 30, Logical: 2}) || f.VC["a"] != 3 || f.VC["b"] != 4 || len(f.VC) != 2 {
		t.Fatalf("collected floors %+v, want public.t at 30.2 with clock {a:3 b:4}", floors)
	}
	if h, err := meta.MaxHLC(ctx, conn, "public.t"); err != nil || h != f.HLC {
		t.Errorf("MaxHLC = %v, %v; want the floor's %v", h, err, f.HLC)
	}

	// A truncation keeps what the versions it removes knew, and the floor
	// never goes down.
	save(map[meta.RowKey]meta.RowVersion{k1: {Version: casualdb.Version{HLC: casualdb.HLC{Wall: 25}, Origin: "b", VC: casualdb.VectorClock{"b": 9}}, OriginLSN: 90}})
	if err := meta.SaveTruncation(ctx, conn, "public.t", casualdb.Version{HLC: casualdb.HLC{Wall: 40}, Origin: "b"}); err != nil {
		t.Fatal(err)
	}
	floors, err = meta.LoadFloors(ctx, conn, []string{"public.t"})
	if f := floors["public.t"]; err != nil || f.HLC != (casualdb.HLC{Wall: 30, Logical: 2}) || f.VC["a"] != 3 || f.VC["b"] != 9 {
		t.Fatalf("collected floor after a truncation: %+v, %v; want 30.2 with clock {a:3 b:9}", floors, err)
	}
}
