package integration

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// auditSchema adds, at every site, a trigger that fires even for what apply
// writes (ENABLE ALWAYS) and counts every application of a row of events: a
// transaction applied twice would show as a second count. The audit table
// has no primary key, so it is not replicated.
const auditSchema = `
CREATE TABLE events (id int PRIMARY KEY, origin text NOT NULL, payload text);
CREATE TABLE audit (id int NOT NULL, op text NOT NULL);
CREATE FUNCTION audit_events() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO audit VALUES (NEW.id, TG_OP); RETURN NEW; END $$;
CREATE TRIGGER audit_events AFTER INSERT OR UPDATE ON events FOR EACH ROW EXECUTE FUNCTION audit_events();
ALTER TABLE events ENABLE ALWAYS TRIGGER audit_events;
`

// writeEvents inserts ids [from, to) at site i, one transaction each, and
// returns how many it wrote.
func writeEvents(ctx context.Context, c *cluster, i, from, to int, written *atomic.Int64) error {
	conn, err := pgx.Connect(ctx, c.sites[i].pg.DSN())
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	for id := from; id < to; id++ {
		if _, err := conn.Exec(ctx, `INSERT INTO events VALUES ($1, $2, repeat('x', 100))`, id, c.sites[i].name); err != nil {
			return fmt.Errorf("insert event %d at %s: %w", id, c.sites[i].name, err)
		}
		written.Add(1)
	}
	return nil
}

// waitWritten polls until the writer reporting to done has written n
// events; it fails the test if the writer stops first.
func waitWritten(t *testing.T, written *atomic.Int64, done <-chan error, n int64) {
	t.Helper()
	for written.Load() < n {
		select {
		case err := <-done:
			t.Fatalf("writer stopped early: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// checkExactlyOnce asserts that every site holds want events and that each
// was applied (or written) exactly once there.
func checkExactlyOnce(t *testing.T, c *cluster, want int) {
	t.Helper()
	c.waitConverged(90*time.Second, "events")
	for i := range c.sites {
		n, err := c.queryString(i, `SELECT count(*)::text FROM events`)
		if err != nil || n != fmt.Sprint(want) {
			t.Errorf("site %s: %s events, %v; want %d", c.sites[i].name, n, err, want)
		}
		dup, err := c.queryString(i, `SELECT count(*)::text FROM (SELECT id FROM audit GROUP BY id HAVING count(*) > 1) d`)
		if err != nil || dup != "0" {
			t.Errorf("site %s: %s events applied more than once, %v", c.sites[i].name, dup, err)
		}
		upd, _ := c.queryString(i, `SELECT count(*)::text FROM audit WHERE op <> 'INSERT'`)
		if upd != "0" {
			t.Errorf("site %s: %s events were re-applied as updates", c.sites[i].name, upd)
		}
	}
}

// TestCrash_SidecarKilledMidStream kills the origin's sidecar and a peer's
// sidecar with SIGKILL while the origin writes, restarts them, and checks
// that nothing is lost and nothing applied twice.
func TestCrash_SidecarKilledMidStream(t *testing.T) {
	c := newCluster(t, 3, auditSchema)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const total = 1500
	var written atomic.Int64
	done := make(chan error, 1)
	go func() { done <- writeEvents(ctx, c, 0, 0, total, &written) }()
	waitWritten := func(n int64) { waitWritten(t, &written, done, n) }
	waitWritten(200)
	c.kill(0) // the origin's sidecar: capture and ship interrupted
	waitWritten(500)
	c.start(0)
	waitWritten(700)
	c.kill(1) // a peer: apply interrupted
	waitWritten(1000)
	c.start(1)
	waitWritten(1100)
	c.kill(0)
	c.kill(2)
	c.start(0)
	c.start(2)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkExactlyOnce(t, c, total)
}

// TestCatchUp_SiteDownWhileOthersWrite stops one site (sidecar and
// PostgreSQL) while the other two write, then brings it back.
func TestCatchUp_SiteDownWhileOthersWrite(t *testing.T) {
	c := newCluster(t, 3, auditSchema)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var written atomic.Int64
	if err := writeEvents(ctx, c, 0, 0, 50, &written); err != nil {
		t.Fatal(err)
	}
	c.waitConverged(30*time.Second, "events")
	c.stop(2)
	if err := c.sites[2].pg.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := writeEvents(ctx, c, 0, 50, 300, &written); err != nil {
		t.Fatal(err)
	}
	if err := writeEvents(ctx, c, 1, 300, 500, &written); err != nil {
		t.Fatal(err)
	}
	c.exec(1, `DELETE FROM events WHERE id < 10`)
	if err := c.sites[2].pg.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	c.start(2)
	c.waitHealthy(2)
	c.waitConverged(60*time.Second, "events")
	n, err := c.queryString(2, `SELECT count(*)::text FROM events`)
	if err != nil || n != "490" {
		t.Errorf("site c: %s events, %v; want 490", n, err)
	}
}

// TestCrash_PostgresRestartedUnderLoad restarts a peer's PostgreSQL, then
// the origin's, while the origin writes: the sidecars' capture and apply
// reconnect on their own, nothing is lost and nothing applied twice.
func TestCrash_PostgresRestartedUnderLoad(t *testing.T) {
	c := newCluster(t, 3, auditSchema)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const total = 900
	var written atomic.Int64
	done := make(chan error, 1)
	go func() {
		// The writer rides out the origin's restart: it reconnects and goes
		// on after the last event that committed (the one in flight may
		// have committed without the writer hearing of it).
		var err error
		for from := 0; from < total; {
			if err = writeEvents(ctx, c, 0, from, total, &written); err == nil {
				break
			}
			if next, qerr := c.queryString(0, `SELECT coalesce(max(id) + 1, 0)::text FROM events`); qerr == nil {
				fmt.Sscan(next, &from)
				written.Store(int64(from))
			}
			select {
			case <-ctx.Done():
				done <- err
				return
			case <-time.After(100 * time.Millisecond):
			}
		}
		done <- err
	}()
	waitWritten := func(n int64) { waitWritten(t, &written, done, n) }
	waitWritten(200)
	if err := c.sites[1].pg.Restart(ctx); err != nil { // a peer: apply loses its connections
		t.Fatal(err)
	}
	waitWritten(500)
	if err := c.sites[0].pg.Restart(ctx); err != nil { // the origin: capture loses its slot stream
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	checkExactlyOnce(t, c, total)
	for i := range c.sites {
		c.waitHealthy(i)
	}
}
