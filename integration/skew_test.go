package integration

import (
	"fmt"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
)

// skewSchema is a key-value table plus the barrier table.
const skewSchema = `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL);` + barrierSchema

// conflictsOn counts the conflict log entries for key k of kv at site i.
func conflictsOn(c *cluster, i, k int) (string, error) {
	return c.queryString(i, `SELECT count(*)::text FROM casualdb.conflict_log WHERE tbl = 'public.kv' AND key = $1`, fmt.Sprintf(`["%d"]`, k))
}

// waitValue waits until site i holds v for key k of kv.
func waitValue(c *cluster, i, k int, v string) {
	c.t.Helper()
	pgtest.CheckFor(c.t, 30*time.Second, 50*time.Millisecond, func() error {
		got, err := c.queryString(i, `SELECT v FROM kv WHERE k = $1`, k)
		if err != nil {
			return fmt.Errorf("site %s, key %d: %w", c.sites[i].name, k, err)
		}
		if got != v {
			return fmt.Errorf("site %s, key %d: v = %q, want %q", c.sites[i].name, k, got, v)
		}
		return nil
	})
}

// TestClockSkew_CausalWriteWinsDespiteClockAhead runs site a's PostgreSQL an
// hour ahead of the others'. A write that saw a's write wins over it
// everywhere, although its commit timestamp is an hour earlier, and is not a
// conflict; two writes that did not see each other are a true conflict, which
// a's (the later by the clocks) wins everywhere and every site logs.
func TestClockSkew_CausalWriteWinsDespiteClockAhead(t *testing.T) {
	c := newClusterWith(t, clusterOptions{Sites: 3, Schema: skewSchema, Links: true, FakeTime: map[int]string{0: "+1h"}})
	soon := time.Now().Add(30 * time.Minute)
	for i, want := range []string{"true", "false", "false"} {
		ahead, err := c.queryString(i, `SELECT (now() > $1::timestamptz)::text`, soon)
		if err != nil || ahead != want {
			t.Fatalf("site %s: clock more than 30 minutes ahead = %s, %v; want %s", c.sites[i].name, ahead, err, want)
		}
	}

	causalOverwrite(t, c, 1, soon)
	concurrentWrites(t, c, 2)
}

// causalOverwrite: b overwrites key k after it has seen a's write.
func causalOverwrite(t *testing.T, c *cluster, k int, soon time.Time) {
	t.Helper()
	const a, b = 0, 1
	c.exec(a, `INSERT INTO kv VALUES ($1, 'a1')`, k)
	c.exec(a, `UPDATE kv SET v = 'a2' WHERE k = $1`, k)
	waitValue(c, b, k, "a2")
	c.exec(b, `UPDATE kv SET v = 'b' WHERE k = $1`, k)
	c.waitConverged(60*time.Second, "kv")
	c.barrier(60 * time.Second) // every site has seen every write
	for i, s := range c.sites {
		if got, err := c.queryString(i, `SELECT v FROM kv WHERE k = $1`, k); err != nil || got != "b" {
			t.Errorf("site %s: v = %q, %v; want b's value", s.name, got, err)
		}
		// b's version took a's HLC as its floor: it is stamped an hour
		// ahead of b's own clock, and so wins.
		ver, err := c.queryString(i, `SELECT origin || ' ' || (hlc_wall > $2)::text FROM casualdb.row_version
			WHERE tbl = 'public.kv' AND key = $1`, fmt.Sprintf(`["%d"]`, k), soon.UnixMicro())
		if err != nil || ver != "b true" {
			t.Errorf("site %s: recorded version (origin, ahead of real time) = %q, %v; want \"b true\"", s.name, ver, err)
		}
		if n, err := conflictsOn(c, i, k); err != nil || n != "0" {
			t.Errorf("site %s: %s conflicts logged for a causal overwrite, %v; want 0", s.name, n, err)
		}
	}
}

// concurrentWrites: a and b write key k without seeing each other's writes.
func concurrentWrites(t *testing.T, c *cluster, k int) {
	t.Helper()
	const a, b, cc = 0, 1, 2
	c.exec(cc, `INSERT INTO kv VALUES ($1, 'c')`, k) // on the real clock
	c.barrier(60 * time.Second)
	// a and b cannot see each other's writes; c sees both.
	c.cut(a, b)
	c.cut(b, a)
	c.exec(a, `UPDATE kv SET v = 'a' WHERE k = $1`, k)
	c.exec(b, `UPDATE kv SET v = 'b' WHERE k = $1`, k)
	// c resolves it first: a's write is an hour later by the clocks.
	waitValue(c, cc, k, "a")
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if n, err := conflictsOn(c, cc, k); err != nil || n == "0" {
			return fmt.Errorf("site c: %s conflicts logged, %v; want some", n, err)
		}
		return nil
	})
	// The links really were cut: each side still holds its own write.
	for i, want := range map[int]string{a: "a", b: "b"} {
		if got, err := c.queryString(i, `SELECT v FROM kv WHERE k = $1`, k); err != nil || got != want {
			t.Fatalf("site %s while cut off: v = %q, %v; want %q", c.sites[i].name, got, err, want)
		}
	}
	c.heal(a, b)
	c.heal(b, a)
	c.waitConverged(60*time.Second, "kv")
	c.barrier(60 * time.Second)
	for i, s := range c.sites {
		if got, err := c.queryString(i, `SELECT v FROM kv WHERE k = $1`, k); err != nil || got != "a" {
			t.Errorf("site %s: v = %q, %v; want a's value (last writer by HLC)", s.name, got, err)
		}
		// Every site met the two writes, so every site logged the
		// conflict, resolved by last-writer-wins for a.
		got, err := c.queryString(i, `SELECT count(*)::text || ' ' || coalesce(string_agg(DISTINCT rule || ':' ||
			(CASE winner WHEN 'local' THEN local_version ELSE remote_version END ->> 'origin'), ','), '')
			FROM casualdb.conflict_log WHERE tbl = 'public.kv' AND key = $1`, fmt.Sprintf(`["%d"]`, k))
		if err != nil || got != "1 lww:a" {
			t.Errorf("site %s: conflicts logged (count, rule:winner) = %q, %v; want \"1 lww:a\"", s.name, got, err)
		}
	}
}
