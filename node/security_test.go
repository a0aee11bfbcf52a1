package node

import (
	"context"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
)

// TestNode_AppliesOnlyReplicatedTables: a transaction naming a table the
// receiving site does not replicate is parked there with the reason, and
// counted, never applied; the stream goes on.
func TestNode_AppliesOnlyReplicatedTables(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two PostgreSQL servers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sites := startSitesDDL(t, ctx, []string{`CREATE TABLE secret (id int PRIMARY KEY, v text)`,
		`CREATE TABLE events (id int, at date, PRIMARY KEY (id, at)) PARTITION BY RANGE (at)`,
		`CREATE TABLE events_2026 PARTITION OF events FOR VALUES FROM ('2026-01-01') TO ('2027-01-01')`}, func(c *Config) {
		c.Database.Tables = []string{"items", "events"}
		if c.Site == "a" {
			c.Database.Tables = append(c.Database.Tables, "secret")
		}
	}, "a", "b")
	a := pgtest.Connect(t, sites[0].pg.DSN())
	pgtest.ExecAll(t, a, `INSERT INTO secret VALUES (1, 'not for b')`, `INSERT INTO items VALUES (1, 'for b')`, `INSERT INTO events VALUES (1, '2026-12-02')`)
	waitFor(t, ctx, sites[1], `SELECT coalesce((SELECT label FROM items WHERE id = 1), '')`, "for b")
	// A partition of a replicated table is written: pgoutput names it.
	waitFor(t, ctx, sites[1], `SELECT count(*)::text FROM events_2026`, "1")
	waitFor(t, ctx, sites[1], `SELECT count(*)::text FROM casualdb.parked WHERE tbl = 'public.secret' AND reason LIKE '%public.secret is not a replicated table at this site (database.tables)%'`, "1")
	waitFor(t, ctx, sites[1], `SELECT count(*)::text FROM secret`, "0")
	if st := sites[1].node.Status(); st.Apply.Parked < 1 {
		t.Errorf("b counted %d parked changes, want the one for public.secret", st.Apply.Parked)
	}
}

func TestClampResend(t *testing.T) {
	for _, c := range []struct {
		from, acked, want uint64
		clamped           bool
	}{
		{1, 0, 1, false},
		{5, 10, 5, false},
		{11, 10, 11, false},
		{1 << 40, 10, 11, true},
	} {
		if got, clamped := clampResend(c.from, c.acked); got != c.want || clamped != c.clamped {
			t.Errorf("clampResend(%d, %d) = %d, %v; want %d, %v", c.from, c.acked, got, clamped, c.want, c.clamped)
		}
	}
}
