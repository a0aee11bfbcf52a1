package meta_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestKeyLookupParams_IndexPlanOnceTableGrows checks that a session with
// KeyLookupParams looks versions up through the primary key even with a
// plan made while casualdb.row_version was empty. A fresh site's apply and
// capture prepare their lookups then; a generic plan kept from that time
// scanned the whole table for every key once it had grown (a throttled
// benchmark on fresh sites spent 40 s of 46 in that statement).
func TestKeyLookupParams_IndexPlanOnceTableGrows(t *testing.T) {
	conn, _ := installed(t)
	pgtest.ExecAll(t, conn, `VACUUM ANALYZE casualdb.row_version`)
	lookupSession(t, conn)
	sql, _ := meta.VersionsQuery([]meta.RowKey{{Table: "public.t", Key: `["1"]`}})
	pgtest.ExecAll(t, conn,
		`PREPARE lookup(text[], text[]) AS `+sql,
		// Planned now, on the empty table.
		`EXECUTE lookup('{public.t}', '{"[\"1\"]"}')`,
		`INSERT INTO casualdb.row_version (tbl, key, hlc_wall, hlc_logical, origin, vclock)
			SELECT 'public.t', '["' || g || '"]', 1, 0, 'a', '{"a": 1}' FROM generate_series(1, 20000) g`)
	text := pgtest.Plan(t, conn, `EXECUTE lookup('{public.t,public.t}', '{"[\"1\"]","[\"2\"]"}')`)
	if strings.Contains(text, "Seq Scan on row_version") || !strings.Contains(text, "Index Cond") {
		t.Fatalf("version lookup does not probe the primary key:\n%s", text)
	}
}

// installed starts a server with CasualDB's schema installed.
func installed(t *testing.T) (*pgx.Conn, context.Context) {
	t.Helper()
	pg := pgtest.NewServer(t, "meta")
	conn := pgtest.Connect(t, pg.DSN())
	ctx := context.Background()
	if err := meta.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	return conn, ctx
}

// lookupSession gives conn the planner settings of apply's and capture's
// sessions, and the plan cache's worst case: one generic plan for every
// execution.
func lookupSession(t *testing.T, conn *pgx.Conn) {
	t.Helper()
	pgtest.SetParams(t, conn, meta.KeyLookupParams)
	pgtest.ExecAll(t, conn, `SET plan_cache_mode = force_generic_plan`)
}

// TestUnchangedCheckSQL checks the statement apply's commit runs to fail
// the transaction when a version it decided against changed.
func TestUnchangedCheckSQL(t *testing.T) {
	conn, ctx := installed(t)
	v := casualdb.Version{HLC: casualdb.HLC{Wall: 10, Logical: 2}, Origin: "a", VC: casualdb.VectorClock{"a": 3, "b": 1}}
	if err := meta.SaveVersions(ctx, conn, map[meta.RowKey]meta.RowVersion{{Table: "public.t", Key: `["1"]`}: {Version: v}}); err != nil {
		t.Fatal(err)
	}
	vc := `{"b": 1, "a": 3}` // another order of the same clock
	other := `{"a": 4, "b": 1}`
	check := func(key string, wall, logical int64, origin string, clock *string) error {
		_, err := conn.Exec(ctx, meta.UnchangedCheckSQL, []string{"public.t"}, []string{key}, []int64{wall}, []int64{logical}, []string{origin}, []*string{clock})
		return err
	}
	for _, tc := range []struct {
		name             string
		key              string
		wall, logical    int64
		origin           string
		clock            *string
		wantSerializable bool
	}{
		{"same version", `["1"]`, 10, 2, "a", &vc, false},
		{"absent as expected", `["2"]`, 0, 0, "", nil, false},
		{"another stamp", `["1"]`, 10, 3, "a", &vc, true},
		{"another origin", `["1"]`, 10, 2, "b", &vc, true},
		{"another clock", `["1"]`, 10, 2, "a", &other, true},
		{"present, expected absent", `["1"]`, 0, 0, "", nil, true},
		{"absent, expected present", `["2"]`, 10, 2, "a", &vc, true},
	} {
		err := check(tc.key, tc.wall, tc.logical, tc.origin, tc.clock)
		var pe *pgconn.PgError
		got := errors.As(err, &pe) && pe.Code == "40001"
		if got != tc.wantSerializable || (err != nil && !got) {
			t.Errorf("%s: err %v; want a serialization failure: %v", tc.name, err, tc.wantSerializable)
		}
	}
}

// TestDurability_WatermarkWithoutWAL checks that moving the W-durability
// watermark writes no WAL (each save was a commit record that moved the
// position the next save then recorded: ten transactions a second on an
// idle site), and that wait_durable reads it.
func TestDurability_WatermarkWithoutWAL(t *testing.T) {
	conn, ctx := installed(t)
	if _, err := conn.Exec(ctx, `SELECT casualdb.wait_durable('20 ms')`); err == nil || !strings.Contains(err.Error(), "is the sidecar running") {
		t.Fatalf("wait_durable before any save: %v; want the error saying nothing was saved", err)
	}
	lsnNow := func() uint64 {
		t.Helper()
		var s string
		if err := conn.QueryRow(ctx, `SELECT pg_current_wal_insert_lsn()::text`).Scan(&s); err != nil {
			t.Fatal(err)
		}
		l, err := casualdb.ParseLSN(s)
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	if err := meta.SaveDurability(ctx, conn, "a", 2, lsnNow()); err != nil {
		t.Fatal(err)
	}
	// That save's row is WAL (a commit record); the LSN alone is not.
	start := lsnNow()
	if err := meta.SaveDurableLSN(ctx, conn, start); err != nil {
		t.Fatal(err)
	}
	var got string
	if err := conn.QueryRow(ctx, `SELECT casualdb.wait_durable('1 s')::text`).Scan(&got); err != nil {
		t.Fatalf("wait_durable after a save at the insert position: %v", err)
	}
	if got != casualdb.FormatLSN(start) {
		t.Fatalf("wait_durable returned %s; want %s", got, casualdb.FormatLSN(start))
	}
	before := lsnNow()
	for i := range 20 {
		if err := meta.SaveDurableLSN(ctx, conn, before+uint64(i)); err != nil {
			t.Fatal(err)
		}
	}
	// 20 commit records would be at least 20 x 30 bytes; allow a
	// background record or two.
	if grew := lsnNow() - before; grew >= 200 {
		t.Fatalf("20 saves of the watermark wrote %d bytes of WAL; want none", grew)
	}
	var need int
	if err := conn.QueryRow(ctx, `SELECT w FROM casualdb.durability WHERE site = 'a'`).Scan(&need); err != nil || need != 2 {
		t.Fatalf("w = %d, %v; want 2", need, err)
	}
}

// TestSaveVersions_Claims: a row's claims are recorded and read back with its
// version; a schema installed before claims existed gains the column on the
// next Install, and its rows read back without claims.
func TestSaveVersions_Claims(t *testing.T) {
	conn, ctx := installed(t)
	// An install of an earlier version: no claims column, one row on record.
	pgtest.ExecAll(t, conn, `ALTER TABLE casualdb.row_version DROP COLUMN claims`,
		`INSERT INTO casualdb.row_version (tbl, key, hlc_wall, hlc_logical, origin, vclock) VALUES ('public.users', '["9"]', 5, 0, 'a', '{"a": 1}')`)
	if err := meta.Install(ctx, conn); err != nil {
		t.Fatalf("install over an earlier schema: %v", err)
	}
	v := casualdb.Version{HLC: casualdb.HLC{Wall: 10, Logical: 2}, Origin: "b", VC: casualdb.VectorClock{"b": 1}}
	claims := map[string]casualdb.Claim{"email": {Stamp: casualdb.Stamp{HLC: casualdb.HLC{Wall: 7}, Origin: "a"}, Hash: 1<<63 + 12345}}
	k1, k2, old := meta.RowKey{Table: "public.users", Key: `["1"]`}, meta.RowKey{Table: "public.users", Key: `["2"]`}, meta.RowKey{Table: "public.users", Key: `["9"]`}
	if err := meta.SaveVersions(ctx, conn, map[meta.RowKey]meta.RowVersion{k1: {Version: v, Claims: claims}, k2: {Version: v}}); err != nil {
		t.Fatal(err)
	}
	got, err := meta.LoadVersions(ctx, conn, []meta.RowKey{k1, k2, old})
	if err != nil {
		t.Fatal(err)
	}
	if c := got[k1].Claims; len(c) != 1 || c["email"] != claims["email"] {
		t.Errorf("claims read back: got %v, want %v", c, claims)
	}
	if c := got[k2].Claims; c != nil {
		t.Errorf("row saved without claims: got %v, want none", c)
	}
	if rv, ok := got[old]; !ok || rv.Claims != nil {
		t.Errorf("row recorded before claims: got %+v (found %v), want it without claims", rv, ok)
	}
	// A newer version replaces the claims with its own.
	v.HLC.Wall = 11
	if err := meta.SaveNewerVersions(ctx, conn, map[meta.RowKey]meta.RowVersion{k1: {Version: v}}); err != nil {
		t.Fatal(err)
	}
	if got, err := meta.LoadVersions(ctx, conn, []meta.RowKey{k1}); err != nil || got[k1].Claims != nil {
		t.Errorf("after a newer version without claims: got %+v, %v; want no claims", got[k1], err)
	}
}

func TestOnlyHeartbeat(t *testing.T) {
	beat := casualdb.Change{Table: meta.HeartbeatTable, Op: casualdb.OpUpdate}
	row := casualdb.Change{Table: "public.kv", Op: casualdb.OpDelete}
	for _, c := range []struct {
		name    string
		changes []casualdb.Change
		want    bool
	}{
		{"a heartbeat", []casualdb.Change{beat}, true},
		{"two heartbeats", []casualdb.Change{beat, beat}, true},
		{"a heartbeat and a delete", []casualdb.Change{beat, row}, false},
		{"a delete", []casualdb.Change{row}, false},
		{"nothing", nil, false},
	} {
		if got := meta.OnlyHeartbeat(&casualdb.Tx{Changes: c.changes}); got != c.want {
			t.Errorf("%s: OnlyHeartbeat = %v, want %v", c.name, got, c.want)
		}
	}
	if meta.HeartbeatTable != "casualdb.heartbeat" {
		t.Errorf("HeartbeatTable = %q", meta.HeartbeatTable)
	}
	hb, del := &casualdb.Tx{Changes: []casualdb.Change{beat}}, &casualdb.Tx{Changes: []casualdb.Change{beat, row}}
	if n := meta.Informing(hb, del, hb, del); n != 2 {
		t.Errorf("Informing of two heartbeats and two deletes = %d, want 2", n)
	}
}
