package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
)

// gcRuns returns how many tombstone collections site i has run.
func (c *cluster) gcRuns(i int) float64 {
	c.t.Helper()
	st := status(c.t.(*testing.T), c, i)
	apply, _ := st["apply"].(map[string]any)
	n, _ := apply["tombstone_collections"].(float64)
	return n
}

func (c *cluster) tombstones(i int) string {
	c.t.Helper()
	n, err := c.queryString(i, `SELECT coalesce(string_agg(key, ',' ORDER BY key), '') FROM casualdb.row_version WHERE tbl = 'public.kv' AND deleted`)
	if err != nil {
		c.t.Fatal(err)
	}
	return n
}

// TestGC_TombstonesGoOnceEverySiteHasSeenThem deletes rows while one site
// is cut off: no site removes the tombstones while that site has not seen
// them, and every site removes them once it has, without any timer on the
// tombstones themselves.
func TestGC_TombstonesGoOnceEverySiteHasSeenThem(t *testing.T) {
	c := newClusterWith(t, clusterOptions{Sites: 3, Links: true, Schema: `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL)`,
		Extra: []string{"gc:", "  interval: 200ms", "  heartbeat: 100ms"}})
	gcScenario(t, c,
		func() { c.cut(0, 2); c.cut(1, 2) }, // c hears from nobody
		func() { c.heal(0, 2); c.heal(1, 2) })

	// Once nothing but heartbeats is applied, the heartbeats fall quiet: a
	// site beats again after writing or applying something else, or every 30 intervals
	// (3 s here). Heartbeats that answered heartbeats kept every site
	// beating every 100 ms for good: the rows at a never stood still for
	// five intervals.
	var last string
	var since time.Time
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		got, err := c.queryString(0, `SELECT string_agg(site || '=' || beat, ',' ORDER BY site) FROM casualdb.heartbeat`)
		if err != nil {
			return err
		}
		if got != last {
			last, since = got, time.Now()
			return fmt.Errorf("the heartbeats at a moved: %s", got)
		}
		if d := time.Since(since); d < 500*time.Millisecond {
			return fmt.Errorf("the heartbeats at a stood still for %s only", d)
		}
		return nil
	})
}

// TestGC_SiteRestarted is the same with c's sidecar stopped and started
// instead of cut off. It once stalled about half the time: c's outbox was
// trimmed empty, and its capture, restarted, appended the transactions the
// slot sent again under new sequences, which a and b dropped as duplicates
// by id and then waited for (see TestCapturer_RestartAfterPurge).
func TestGC_SiteRestarted(t *testing.T) {
	c := newClusterWith(t, clusterOptions{Sites: 3, Schema: `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL)`,
		Extra: []string{"gc:", "  interval: 200ms", "  heartbeat: 100ms"}})
	gcScenario(t, c, func() { c.stop(2) }, func() { c.start(2); c.waitHealthy(2) })
}

// gcScenario deletes rows at a while isolate keeps c from seeing them,
// checks that a and b keep the tombstones through several collections, then
// rejoins c and checks that every site removes them.
func gcScenario(t *testing.T, c *cluster, isolate, rejoin func()) {
	c.exec(0, `INSERT INTO kv SELECT g, 'v' FROM generate_series(1, 6) g`)
	c.waitConverged(30*time.Second, "kv")
	isolate()
	c.exec(0, `DELETE FROM kv WHERE k <= 3`)
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if got, _ := c.queryString(1, `SELECT count(*)::text FROM kv`); got != "3" {
			return fmt.Errorf("site b holds %s rows, want 3", got)
		}
		return nil
	})
	// Several collections later, a and b still keep the tombstones: c has
	// not seen the deletes.
	runs := []float64{c.gcRuns(0), c.gcRuns(1)}
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		for i, r := range runs {
			if got := c.gcRuns(i); got < r+3 {
				return fmt.Errorf("site %s ran %v collections since, want 3", c.sites[i].name, got-r)
			}
		}
		return nil
	})
	for i := range 2 {
		if got, want := c.tombstones(i), `["1"],["2"],["3"]`; got != want {
			t.Fatalf("site %s while c is away: tombstones %s, want %s", c.sites[i].name, got, want)
		}
	}

	rejoin()
	c.waitConverged(30*time.Second, "kv")
	pgtest.CheckFor(t, 60*time.Second, 100*time.Millisecond, func() error {
		for i := range c.sites {
			if got := c.tombstones(i); got != "" {
				prog, _ := c.queryString(i, `SELECT string_agg(origin || ' seq ' || seq || ' deps ' || coalesce(deps::text, '-'), '; ') FROM casualdb.progress`)
				return fmt.Errorf("site %s still keeps tombstones %s; progress: %s", c.sites[i].name, got, prog)
			}
		}
		return nil
	})
	// Live rows keep their versions, and the table still replicates.
	if got, _ := c.queryString(1, `SELECT count(*)::text FROM casualdb.row_version WHERE tbl = 'public.kv'`); got != "3" {
		t.Errorf("site b: %s row versions for kv, want 3 (the live rows)", got)
	}
	c.exec(1, `DELETE FROM kv WHERE k = 4`)
	c.exec(2, `INSERT INTO kv VALUES (1, 'back')`)
	c.waitConverged(30*time.Second, "kv")
	if got, _ := c.queryString(0, `SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM kv`); got != "1=back,5=v,6=v" {
		t.Errorf("site a after more writes: %s", got)
	}
}

// TestGC_ReinsertAfterUnevenCollection is issue 12's second divergence: a
// collects a tombstone that b and c still hold (they collect once an hour),
// then re-inserts the key. Without a collected floor, a's capture started
// the key's clock afresh ({a:1}, HLC from a's clock), and b and c kept the
// row deleted: in kv (delete_wins) because the fresh clock does not cover
// the delete's floor (dead), in kv_lww because b's delete, made on a clock
// an hour ahead, is later by HLC. The row then existed at a only.
func TestGC_ReinsertAfterUnevenCollection(t *testing.T) {
	gc := func(interval string) []string {
		return []string{"gc:", "  interval: " + interval, "  heartbeat: 100ms"}
	}
	c := newClusterWith(t, clusterOptions{Sites: 3,
		Schema:    `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL); CREATE TABLE kv_lww (k int PRIMARY KEY, v text NOT NULL)`,
		FakeTime:  map[int]string{1: "+1h"},
		Extra:     []string{"conflicts:", "  tables:", "    kv_lww:", "      delete_policy: lww"},
		SiteExtra: map[int][]string{0: gc("200ms"), 1: gc("1h"), 2: gc("1h")}})
	const a, b = 0, 1
	tables := []string{"kv", "kv_lww"}
	tombstones := func(i int) string {
		t.Helper()
		got, err := c.queryString(i, `SELECT coalesce(string_agg(tbl || key, ',' ORDER BY tbl, key), '') FROM casualdb.row_version WHERE deleted`)
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	for _, tbl := range tables {
		c.exec(a, `INSERT INTO `+tbl+` VALUES (1, 'first'), (2, 'other')`)
	}
	c.waitConverged(30*time.Second, tables...)
	// b deletes on its clock an hour ahead.
	for _, tbl := range tables {
		c.exec(b, `DELETE FROM `+tbl+` WHERE k = 1`)
	}
	const held = `public.kv["1"],public.kv_lww["1"]`
	for i := range c.sites {
		pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
			if got := tombstones(i); i != a && got != held {
				return fmt.Errorf("site %s: tombstones %q, want %q", c.sites[i].name, got, held)
			}
			for _, tbl := range tables {
				if got, err := c.queryString(i, `SELECT count(*)::text FROM `+tbl+` WHERE k = 1`); err != nil || got != "0" {
					return fmt.Errorf("site %s, %s: %s rows with k = 1, %v; want the delete applied", c.sites[i].name, tbl, got, err)
				}
			}
			return nil
		})
	}
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if got := tombstones(a); got != "" {
			return fmt.Errorf("site a keeps tombstones %q, want them collected", got)
		}
		return nil
	})
	for i := 1; i < 3; i++ {
		if got := tombstones(i); got != held {
			t.Fatalf("site %s: tombstones %q, want %q (it collects once an hour)", c.sites[i].name, got, held)
		}
	}

	// a kept what the collected tombstones knew: b's delete, an hour ahead.
	if got, err := c.queryString(a, `SELECT string_agg(tbl || ' ' || (hlc_wall > $1)::text, ',' ORDER BY tbl) FROM casualdb.collected_floor`,
		time.Now().Add(30*time.Minute).UnixMicro()); err != nil || got != "public.kv true,public.kv_lww true" {
		t.Errorf("site a: collected floors (table, an hour ahead) %q, %v; want both tables, ahead", got, err)
	}

	// a writes the key again, on the real clock.
	for _, tbl := range tables {
		c.exec(a, `INSERT INTO `+tbl+` VALUES (1, 'again')`)
	}
	c.waitConverged(30*time.Second, tables...)
	for i, s := range c.sites {
		for _, tbl := range tables {
			if got, err := c.queryString(i, `SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM `+tbl); err != nil || got != "1=again,2=other" {
				t.Errorf("site %s, %s: %q, %v; want 1=again,2=other", s.name, tbl, got, err)
			}
		}
	}
	// The clock goes on from there: b's overwrite of the re-inserted row
	// wins everywhere, and a delete and a second re-insert at a do too.
	for _, tbl := range tables {
		c.exec(b, `UPDATE `+tbl+` SET v = 'b' WHERE k = 1`)
	}
	c.waitConverged(30*time.Second, tables...)
	for i, s := range c.sites {
		for _, tbl := range tables {
			if got, err := c.queryString(i, `SELECT v FROM `+tbl+` WHERE k = 1`); err != nil || got != "b" {
				t.Errorf("site %s, %s: k=1 is %q, %v; want b's update", s.name, tbl, got, err)
			}
		}
	}
}

// TestGC_SiteBeatsAfterItsOwnWrites: a site that writes and then falls quiet
// beats once more within an interval, so that its peers learn its newest
// sequence (a lost last transaction shows as a gap and is asked for again)
// without waiting for the quiet beat, 30 intervals (150 s here) later, far
// past the poll. Before, only applying a peer's write made a site beat: a's
// row stood still.
func TestGC_SiteBeatsAfterItsOwnWrites(t *testing.T) {
	c := newClusterWith(t, clusterOptions{Sites: 2, Schema: `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL)`,
		Extra: []string{"gc:", "  heartbeat: 5s"}})
	beat := func() (string, error) {
		return c.queryString(1, `SELECT coalesce((SELECT beat::text FROM casualdb.heartbeat WHERE site = 'a'), '')`)
	}
	// a's beat at start has reached b.
	var before string
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		var err error
		if before, err = beat(); err == nil && before == "" {
			err = fmt.Errorf("no heartbeat of a at b yet")
		}
		return err
	})
	c.exec(0, `INSERT INTO kv VALUES (1, 'x')`)
	c.waitConverged(30*time.Second, "kv")
	pgtest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		got, err := beat()
		if err == nil && got == before {
			err = fmt.Errorf("a's heartbeat at b still %s after a's write", got)
		}
		return err
	})
}
