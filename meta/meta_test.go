package meta_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
)

func TestTrimConflictLog(t *testing.T) {
	conn, ctx := installed(t)
	for _, key := range []string{`["old"]`, `["new"]`} {
		if err := meta.LogConflict(ctx, conn, meta.Conflict{Table: "public.t", Key: key, Rule: "lww", Winner: "local"}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `UPDATE casualdb.conflict_log SET logged_at = now() - interval '2 days' WHERE key = '["old"]'`); err != nil {
		t.Fatal(err)
	}
	n, err := meta.TrimConflictLog(ctx, conn, 24*time.Hour)
	if err != nil || n != 1 {
		t.Fatalf("TrimConflictLog = %d, %v; want 1 removed", n, err)
	}
	var left string
	if err := conn.QueryRow(ctx, `SELECT string_agg(key, ',') FROM casualdb.conflict_log`).Scan(&left); err != nil || left != `["new"]` {
		t.Fatalf("left %q, %v; want the recent one", left, err)
	}
}

// TestCollectTombstones checks the stability rule on recorded progress: a
// tombstone of origin a goes only once the last transaction applied from
// every other site says that site had applied a's delete.
func TestCollectTombstones(t *testing.T) {
	conn, ctx := installed(t)
	v := casualdb.Version{HLC: casualdb.HLC{Wall: 1}, Origin: "a", VC: casualdb.VectorClock{"a": 1}}
	err := meta.SaveVersions(ctx, conn, map[meta.RowKey]meta.RowVersion{
		{Table: "public.t", Key: `["1"]`}: {Version: v, Deleted: true, OriginLSN: 100},
		{Table: "public.t", Key: `["2"]`}: {Version: v, Deleted: true, OriginLSN: 300},
		{Table: "public.t", Key: `["3"]`}: {Version: v, OriginLSN: 50}, // live: stays
	})
	if err != nil {
		t.Fatal(err)
	}
	sites := []casualdb.SiteID{"a", "b", "c"}
	collect := func() int64 {
		t.Helper()
		n, err := meta.CollectTombstones(ctx, conn, sites, "b")
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	// Nothing heard from c yet.
	if n := collect(); n != 0 {
		t.Fatalf("collected %d with no progress from c, want 0", n)
	}
	save := func(origin casualdb.SiteID, deps map[casualdb.SiteID]uint64) {
		t.Helper()
		if err := meta.SaveProgress(ctx, conn, origin, meta.Progress{Seq: 1, LSN: 1, Deps: deps}); err != nil {
			t.Fatal(err)
		}
	}
	save("c", map[casualdb.SiteID]uint64{"a": 200})
	if n := collect(); n != 1 {
		t.Fatalf("c had applied a up to 200: collected %d, want 1 (key 1)", n)
	}
	save("c", map[casualdb.SiteID]uint64{"a": 300})
	if n := collect(); n != 1 {
		t.Fatalf("c had applied a up to 300: collected %d, want 1 (key 2)", n)
	}
	var left string
	if err := conn.QueryRow(ctx, `SELECT string_agg(key, ',') FROM casualdb.row_version`).Scan(&left); err != nil || left != `["3"]` {
		t.Fatalf("left %q, %v; want the live row only", left, err)
	}
}

// TestHintExpiry records expired hints twice (they add up), resolves the
// record once the site has applied far enough, reopens it on a later
// expiry, and forgets it by age.
func TestHintExpiry(t *testing.T) {
	conn, ctx := installed(t)
	load := func() []meta.HintExpiry {
		t.Helper()
		es, err := meta.LoadHintExpiries(ctx, conn)
		if err != nil {
			t.Fatal(err)
		}
		return es
	}
	record := func(es ...meta.HintExpiry) {
		t.Helper()
		if err := meta.RecordHintExpiries(ctx, conn, es); err != nil {
			t.Fatal(err)
		}
	}
	record(meta.HintExpiry{For: "c", Origin: "a", Epoch: "e1", Hints: 3, FirstSeq: 5, LastSeq: 7, LastLSN: 700})
	record(meta.HintExpiry{For: "c", Origin: "a", Epoch: "e1", Hints: 2, FirstSeq: 8, LastSeq: 9, LastLSN: 900})
	es := load()
	if len(es) != 1 {
		t.Fatalf("records: %+v, want one", es)
	}
	if e := es[0]; e.Hints != 5 || e.FirstSeq != 5 || e.LastSeq != 9 || e.LastLSN != 900 || !e.Resolved.IsZero() || e.FirstExpired.IsZero() {
		t.Errorf("record: %+v, want 5 hints, seqs 5-9, LSN 900, open", e)
	}
	if ok, err := meta.ResolveHintExpiry(ctx, conn, "c", "a", "e1", 8); err != nil || ok {
		t.Errorf("resolve at applied 8 = %v, %v; want not resolved (9 expired)", ok, err)
	}
	if ok, err := meta.ResolveHintExpiry(ctx, conn, "c", "a", "e2", 100); err != nil || ok {
		t.Errorf("resolve in another epoch = %v, %v; want not resolved", ok, err)
	}
	if ok, err := meta.ResolveHintExpiry(ctx, conn, "c", "a", "e1", 9); err != nil || !ok {
		t.Errorf("resolve at applied 9 = %v, %v; want resolved", ok, err)
	}
	if e := load()[0]; e.Resolved.IsZero() {
		t.Errorf("record after resolve: %+v, want resolved", e)
	}
	record(meta.HintExpiry{For: "c", Origin: "a", Epoch: "e1", Hints: 1, FirstSeq: 12, LastSeq: 12, LastLSN: 1200})
	if e := load()[0]; !e.Resolved.IsZero() || e.LastSeq != 12 || e.Hints != 6 {
		t.Errorf("record after a later expiry: %+v, want open again, up to 12, 6 hints", e)
	}
	if n, err := meta.ForgetHintExpiries(ctx, conn, time.Hour, 24*time.Hour); err != nil || n != 0 {
		t.Errorf("forget recent = %d, %v; want nothing removed", n, err)
	}
	if _, err := conn.Exec(ctx, `UPDATE casualdb.hint_expiry SET last_expired = now() - interval '2 days'`); err != nil {
		t.Fatal(err)
	}
	if n, err := meta.ForgetHintExpiries(ctx, conn, time.Hour, 24*time.Hour); err != nil || n != 1 {
		t.Errorf("forget open for two days = %d, %v; want 1 removed", n, err)
	}
}

// TestFindConflicts reads back what LogConflict wrote, newest first, by
// table, window and limit.
func TestFindConflicts(t *testing.T) {
	conn, ctx := installed(t)
	v := casualdb.Version{HLC: casualdb.HLC{Wall: 5, Logical: 2}, Origin: "eu1", VC: casualdb.VectorClock{"eu1": 1}}
	for _, c := range []meta.Conflict{
		{Table: "public.t", Key: `["old"]`, Rule: "lww", Winner: "local", LocalVersion: v, RemoteVersion: v},
		{Table: "public.t", Key: `["1"]`, Rule: "lww", Winner: "remote", LocalVersion: v, LocalRow: json.RawMessage(`{"id": 1}`)},
		{Table: "public.u", Key: `["2"]`, Rule: "lww", Winner: "local"},
	} {
		if err := meta.LogConflict(ctx, conn, c); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `UPDATE casualdb.conflict_log SET logged_at = now() - interval '2 days' WHERE key = '["old"]'`); err != nil {
		t.Fatal(err)
	}
	keys := func(f meta.ConflictFilter) string {
		t.Helper()
		list, err := meta.FindConflicts(ctx, conn, f)
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, c := range list {
			out = append(out, c.Table+" "+c.Key)
		}
		return fmt.Sprint(out)
	}
	if got, want := keys(meta.ConflictFilter{Since: time.Hour, Limit: 10}), `[public.u ["2"] public.t ["1"]]`; got != want {
		t.Errorf("last hour: got %s, want %s", got, want)
	}
	if got, want := keys(meta.ConflictFilter{Since: 72 * time.Hour, Table: "public.t", Limit: 10}), `[public.t ["1"] public.t ["old"]]`; got != want {
		t.Errorf("public.t, 72h: got %s, want %s", got, want)
	}
	if got, want := keys(meta.ConflictFilter{Since: 72 * time.Hour, Limit: 1}), `[public.u ["2"]]`; got != want {
		t.Errorf("limit 1: got %s, want %s", got, want)
	}
	list, err := meta.FindConflicts(ctx, conn, meta.ConflictFilter{Since: time.Hour, Table: "public.t", Limit: 1})
	if err != nil || len(list) != 1 {
		t.Fatalf("got %+v, %v", list, err)
	}
	c := list[0]
	if c.Winner != "remote" || c.LocalVersion == nil || c.LocalVersion.VC["eu1"] != 1 || c.LocalVersion.HLC != v.HLC || c.RemoteVersion != nil ||
		string(c.LocalRow) != `{"id": 1}` || c.RemoteRow != nil || c.LoggedAt.Location() != time.UTC {
		t.Errorf("got %+v", c)
	}
}
