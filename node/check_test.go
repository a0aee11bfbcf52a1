package node

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/check"
	"github.com/casualdb/casualdb/internal/pgtest"
)

// TestNode_Check: three sites that converged check clean; then, at one
// site, with replication bypassed (the writes are made under a CasualDB
// replication origin, so capture takes them for apply's and ships
// nothing), a row is changed, a deleted row is resurrected and a row is
// removed. The check lists exactly those three keys, each with every
// site's version, and counts what it read.
func TestNode_Check(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three PostgreSQL servers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sites := startSites(t, ctx, "a", "b", "c")
	a := pgtest.Connect(t, sites[0].pg.DSN())
	pgtest.ExecAll(t, a,
		`INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 500) AS i`,
		`DELETE FROM items WHERE id = 7`)
	for _, s := range sites {
		waitFor(t, ctx, s, `SELECT count(*)::text FROM items`, "499")
	}
	rep, skipped, err := sites[0].node.Check(ctx, check.Options{Buckets: 64})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Clean() || len(skipped) > 0 || !rep.CutOK || len(rep.Sites) != 3 {
		t.Fatalf("converged sites: clean %v, skipped %v, cut reached %v, sites %v; report %+v", rep.Clean(), skipped, rep.CutOK, rep.Sites, rep)
	}
	if len(rep.Tables) != 1 || rep.Tables[0].Table != "public.items" || rep.Tables[0].Rows["b"] != 499 {
		t.Fatalf("tables %+v, want public.items with 499 rows at b", rep.Tables)
	}
	for _, s := range []string{"a", "b", "c"} {
		if c := rep.Cost[s]; c.Rows != 499 || c.Bytes == 0 {
			t.Errorf("site %s read %+v, want 499 rows and their bytes", s, c)
		}
	}

	b := pgtest.Connect(t, sites[1].pg.DSN())
	// session_replication_role = replica does not bypass CasualDB: capture
	// decodes the WAL whatever the role, so the write replicates.
	pgtest.ExecAll(t, b, `SET session_replication_role = replica`, `UPDATE items SET label = 'role replica' WHERE id = 2`, `RESET session_replication_role`)
	waitFor(t, ctx, sites[0], `SELECT label FROM items WHERE id = 2`, "role replica")
	pgtest.ExecAll(t, b,
		`SELECT pg_replication_origin_create('casualdb_bypass')`,
		`SELECT pg_replication_origin_session_setup('casualdb_bypass')`,
		`UPDATE items SET label = 'changed at b' WHERE id = 3`,
		`INSERT INTO items VALUES (7, 'resurrected at b')`,
		`DELETE FROM items WHERE id = 11`,
		`SELECT pg_replication_origin_session_reset()`)
	rep, _, err = sites[2].node.Check(ctx, check.Options{Buckets: 64})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Clean() {
		t.Fatalf("check found nothing after writes that bypassed replication: %+v", rep)
	}
	t.Logf("report: differ %d, in flight %d, cost %+v, diffs %+v", rep.Differ, rep.InFlight, rep.Cost, rep.Tables[0].Diffs)
	var keys []string
	for _, d := range rep.Tables[0].Diffs {
		keys = append(keys, d.Key)
		if len(d.Sites) != 3 {
			t.Errorf("key %s: %d sites, want 3", d.Key, len(d.Sites))
		}
		atB, atA := d.Sites["b"], d.Sites["a"]
		switch d.Key {
		case `["3"]`:
			// The bypassed write kept the version: only the image differs.
			if !atB.Present || !atA.Present || atB.Image == atA.Image || atB.Version == nil || atA.Version == nil || atB.Version.Stamp() != atA.Version.Stamp() {
				t.Errorf("changed row: b %+v, a %+v; want both present, one version, two images", atB, atA)
			}
		case `["7"]`:
			if !atB.Present || atA.Present || atB.Version == nil || !atB.Deleted {
				t.Errorf("resurrected row: b %+v (want present, with its tombstone), a %+v (want absent)", atB, atA)
			}
		case `["11"]`:
			if atB.Present || !atA.Present || atB.Version == nil || atB.Deleted {
				t.Errorf("removed row: b %+v (want absent with a live version), a %+v", atB, atA)
			}
		}
	}
	if want := []string{`["11"]`, `["3"]`, `["7"]`}; !slices.Equal(keys, want) {
		t.Errorf("differing keys %v, want %v", keys, want)
	}
	if rep.Differ != 3 || rep.Tables[0].Differing > 3 {
		t.Errorf("differing rows %d, buckets %d; want 3 rows in at most 3 buckets", rep.Differ, rep.Tables[0].Differing)
	}
	// Listing read the differing buckets only, not the table.
	if c := rep.Cost["a"]; c.Rows >= 2*499 || c.Rows <= 499 {
		t.Errorf("site a read %d rows: want the table once plus a few buckets", c.Rows)
	}
	if c := rep.Cut["a"]; c.Seq == 0 || c.Epoch == "" {
		t.Errorf("cut of a: %+v, want a's last outbox sequence and epoch", c)
	} else if lsn, err := casualdb.ParseLSN(c.LSN); err != nil || lsn == 0 {
		t.Errorf("cut of a: LSN %q (%v), want a's last commit", c.LSN, err)
	}

	// The admin endpoint runs the same check; bad parameters are refused.
	rec := httptest.NewRecorder()
	sites[0].node.serveCheck(rec, httptest.NewRequest(http.MethodGet, "/check?table=nope", nil))
	if rec.Code != http.StatusBadRequest || !strings.Contains(rec.Body.String(), "public.nope is not replicated") {
		t.Errorf("/check?table=nope: %d %s", rec.Code, rec.Body)
	}
	rec = httptest.NewRecorder()
	sites[0].node.serveCheck(rec, httptest.NewRequest(http.MethodGet, "/check?table=items&buckets=32", nil))
	var res CheckResult
	if err := json.Unmarshal(rec.Body.Bytes(), &res); rec.Code != http.StatusOK || err != nil || res.Differ != 3 || res.Tables[0].Buckets != 32 {
		t.Errorf("/check: %d, %v, %d rows differ in %+v", rec.Code, err, res.Differ, res.Tables)
	}

	// Repair: each difference is written again at the site holding the
	// winner, replicates, and a second check is clean.
	rep, _, err = sites[0].node.Check(ctx, check.Options{Buckets: 64, Repair: true})
	if err != nil {
		t.Fatal(err)
	}
	repairs := map[string]string{}
	for _, r := range rep.Repairs {
		if !r.Done {
			t.Errorf("repair of %s not done: %s", r.Key, r.Note)
		}
		repairs[r.Key] = string(r.Site) + " " + r.Op
	}
	if want := map[string]string{`["3"]`: "a rewrite", `["7"]`: "b delete", `["11"]`: "a rewrite"}; !maps.Equal(repairs, want) {
		t.Errorf("repairs %v, want %v", repairs, want)
	}
	for _, s := range sites {
		waitFor(t, ctx, s, `SELECT string_agg(id || '=' || label, ',' ORDER BY id) FROM items WHERE id IN (3, 7, 11)`, "3=item 3,11=item 11")
	}
	pgtest.CheckFor(t, time.Minute, 100*time.Millisecond, func() error {
		rep, _, err := sites[1].node.Check(ctx, check.Options{Buckets: 64})
		if err != nil {
			return err
		}
		if !rep.Clean() || rep.InFlight > 0 {
			return fmt.Errorf("second check: %d differ, %d in flight", rep.Differ, rep.InFlight)
		}
		return nil
	})
	var logged string
	if err := a.QueryRow(ctx, `SELECT string_agg(key, ' ' ORDER BY key) FROM casualdb.conflict_log WHERE rule = $1`, check.RuleRepair).Scan(&logged); err != nil || logged != `["11"] ["3"]` {
		t.Errorf("repairs in a's conflict log: %q, %v; want keys 11 and 3", logged, err)
	}
	// Nothing left to repair: a repair run does nothing.
	if rep, _, err = sites[2].node.Check(ctx, check.Options{Buckets: 64, Repair: true}); err != nil || len(rep.Repairs) != 0 {
		t.Errorf("repair after convergence: %v, %+v", err, rep.Repairs)
	}
}

// TestNode_AntiEntropy: with antientropy.interval set, a write that
// bypassed replication at one site is found and repaired in the background,
// without anyone running a check; the metrics and /status count it, and
// only one site (the smallest name) runs the checks.
func TestNode_AntiEntropy(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two PostgreSQL servers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	sites := startSitesWith(t, ctx, func(c *Config) {
		c.AntiEntropy.Interval, c.AntiEntropy.Buckets = 300*time.Millisecond, 16
	}, "a", "b")
	a := pgtest.Connect(t, sites[0].pg.DSN())
	pgtest.ExecAll(t, a, `INSERT INTO items SELECT i, 'item ' || i FROM generate_series(1, 50) AS i`)
	waitFor(t, ctx, sites[1], `SELECT count(*)::text FROM items`, "50")
	b := pgtest.Connect(t, sites[1].pg.DSN())
	pgtest.ExecAll(t, b,
		`SELECT pg_replication_origin_create('casualdb_bypass')`,
		`SELECT pg_replication_origin_session_setup('casualdb_bypass')`,
		`UPDATE items SET label = 'changed at b' WHERE id = 5`,
		`SELECT pg_replication_origin_session_reset()`)
	waitFor(t, ctx, sites[1], `SELECT label FROM items WHERE id = 5`, "item 5")
	st := sites[0].node.Status()
	if st.AntiEntropy == nil || st.AntiEntropy.Runs == 0 || st.AntiEntropy.Repairs < 1 || st.AntiEntropy.RowsRead == 0 {
		t.Errorf("a's anti-entropy status %+v: want runs, rows read and a repair", st.AntiEntropy)
	}
	if stb := sites[1].node.Status(); stb.AntiEntropy == nil || stb.AntiEntropy.Runs != 0 || stb.AntiEntropy.Skipped == 0 {
		t.Errorf("b's anti-entropy status %+v: want only skipped runs (a's turn)", stb.AntiEntropy)
	}
	rec := httptest.NewRecorder()
	sites[0].node.adminHandler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, want := range []string{"casualdb_antientropy_runs_total ", "casualdb_antientropy_repairs_total 1", "casualdb_antientropy_differing_rows ", "casualdb_antientropy_rows_read_total "} {
		if !strings.Contains(rec.Body.String(), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
