package node

import (
	"context"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/casualdb/casualdb/check"
	"github.com/casualdb/casualdb/internal/pgtest"
)

// TestNode_CheckScale measures a check of CASUALDB_CHECK_ROWS rows (e.g.
// 1000000) across three sites; it only runs when that variable is set
// (make check-scale). It asserts the check is clean and logs what it took
// and read; speed is not asserted.
func TestNode_CheckScale(t *testing.T) {
	n, _ := strconv.Atoi(os.Getenv("CASUALDB_CHECK_ROWS"))
	if n <= 0 {
		t.Skip("set CASUALDB_CHECK_ROWS to measure a check of that many rows")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	sites := startSites(t, ctx, "a", "b", "c")
	a := pgtest.Connect(t, sites[0].pg.DSN())
	const chunk = 20000
	for i := 0; i < n; i += chunk {
		if _, err := a.Exec(ctx, `INSERT INTO items SELECT i, 'item number ' || i FROM generate_series($1::int, $2::int) AS i`, i+1, min(i+chunk, n)); err != nil {
			t.Fatal(err)
		}
	}
	loaded := time.Now()
	for _, s := range sites {
		waitForWithin(t, ctx, 20*time.Minute, s, `SELECT count(*)::text FROM items`, strconv.Itoa(n))
	}
	t.Logf("%d rows replicated to every site in %s", n, time.Since(loaded).Round(time.Second))
	start := time.Now()
	rep, skipped, err := sites[1].node.Check(ctx, check.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Clean() || len(skipped) > 0 {
		t.Fatalf("clean %v, skipped %v: %+v", rep.Clean(), skipped, rep.Tables)
	}
	var dump int64
	if err := a.QueryRow(ctx, `SELECT sum(octet_length(row_to_json(t)::text)) FROM items t`).Scan(&dump); err != nil {
		t.Fatal(err)
	}
	t.Logf("check of %d rows x 3 sites: %s; read per site %+v; sent per site about %d bytes of digests; a full dump of the table is %d bytes",
		n, time.Since(start).Round(time.Millisecond), rep.Cost, check.DefaultBuckets*24, dump)
}
