package integration

import (
	"testing"
	"time"
)

const accountsSchema = `
CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance numeric(12,2) NOT NULL DEFAULT 0, note text, tags text[], meta jsonb, at timestamptz);
CREATE TABLE items (k text, n int, v text, PRIMARY KEY (k, n));
`

func TestReplication_InsertUpdateDelete(t *testing.T) {
	c := newCluster(t, 3, accountsSchema)
	c.exec(0, `INSERT INTO accounts (id, owner, balance, tags, meta, at) VALUES (1, 'ann', 10.5, '{x,y}', '{"a": [1, 2]}', '2026-01-02 03:04:05+02')`)
	c.exec(1, `INSERT INTO accounts (id, owner) VALUES (2, 'bob')`)
	c.exec(2, `INSERT INTO accounts (id, owner, note) VALUES (3, 'cat', NULL)`)
	// A multi-statement transaction.
	c.exec(0, `BEGIN; INSERT INTO items VALUES ('a', 1, 'one'), ('a', 2, 'two'); UPDATE accounts SET balance = 99 WHERE id = 1; COMMIT;`)
	c.waitConverged(30*time.Second, "accounts", "items")
	for i := range c.sites {
		got, err := c.queryString(i, `SELECT count(*)::text FROM accounts`)
		if err != nil || got != "3" {
			t.Fatalf("site %d: accounts count = %q, %v; want 3", i, got, err)
		}
	}
	c.exec(1, `UPDATE accounts SET owner = 'ann2' WHERE id = 1`)
	c.exec(2, `DELETE FROM accounts WHERE id = 2`)
	c.exec(1, `UPDATE items SET n = 3 WHERE k = 'a' AND n = 2`) // primary-key change
	c.waitConverged(30*time.Second, "accounts", "items")
	for i := range c.sites {
		got, _ := c.queryString(i, `SELECT string_agg(id::text || owner || balance::text, ',' ORDER BY id) FROM accounts`)
		if got != "1ann299.00,3cat0.00" {
			t.Errorf("site %d: accounts = %q, want 1ann299.00,3cat0.00", i, got)
		}
		got, _ = c.queryString(i, `SELECT string_agg(k || n::text || v, ',' ORDER BY k, n) FROM items`)
		if got != "a1one,a3two" {
			t.Errorf("site %d: items = %q, want a1one,a3two", i, got)
		}
	}
}

// TestReplication_KeysRenderedCanonically keys a table by timestamptz and
// writes it from sessions in different time zones: keys must still match.
func TestReplication_KeysRenderedCanonically(t *testing.T) {
	c := newCluster(t, 3, `CREATE TABLE tz (at timestamptz PRIMARY KEY, f float8, v int)`)
	c.exec(1, `SET TimeZone = 'Asia/Tokyo'; INSERT INTO tz VALUES ('2026-01-01 09:00:00+09', 0.1, 1)`)
	c.waitConverged(30*time.Second, "tz")
	c.exec(0, `SET TimeZone = 'America/New_York'; UPDATE tz SET v = 2 WHERE at = '2025-12-31 19:00:00-05'`)
	c.waitConverged(30*time.Second, "tz")
	for i := range c.sites {
		got, err := c.queryString(i, `SELECT v::text FROM tz`)
		if err != nil || got != "2" {
			t.Errorf("site %s: v = %q, %v; want 2", c.sites[i].name, got, err)
		}
		keys, _ := c.queryString(i, `SELECT string_agg(key, ',') FROM casualdb.row_version WHERE tbl = 'public.tz'`)
		if keys != `["2026-01-01 00:00:00+00"]` {
			t.Errorf("site %s: recorded keys %s, want one UTC key", c.sites[i].name, keys)
		}
	}
}
