package integration

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// concurrently stops every sidecar, runs writes (SQL by site index) one
// after the other, then starts the sidecars again: no site saw another's
// write before making its own, so every pair is concurrent, and the writes'
// commit times follow the order of the list.
func (c *cluster) concurrently(writes ...siteWrite) {
	c.t.Helper()
	for i := range c.sites {
		c.stop(i)
	}
	for _, w := range writes {
		c.exec(w.site, w.sql)
	}
	for i := range c.sites {
		c.start(i)
	}
	for i := range c.sites {
		c.waitHealthy(i)
	}
}

type siteWrite struct {
	site int
	sql  string
}

// loggedConflict is one row of casualdb.conflict_log.
type loggedConflict struct {
	Rule, Winner                string
	LocalVersion, RemoteVersion json.RawMessage
	LocalRow, RemoteRow         json.RawMessage
}

// conflictsFor returns what site i logged for one key of table.
func (c *cluster) conflictsFor(i int, table, key string) []loggedConflict {
	c.t.Helper()
	out, err := c.queryString(i, `SELECT coalesce(json_agg(json_build_object('rule', rule, 'winner', winner,
		'localversion', local_version, 'remoteversion', remote_version, 'localrow', local_row, 'remoterow', remote_row) ORDER BY id), '[]')::text
		FROM casualdb.conflict_log WHERE tbl = $1 AND key = $2`, table, key)
	if err != nil {
		c.t.Fatal(err)
	}
	var cs []loggedConflict
	if err := json.Unmarshal([]byte(out), &cs); err != nil {
		c.t.Fatalf("conflict log at %s: %v", c.sites[i].name, err)
	}
	return cs
}

// TestConflicts_Kinds makes each kind of conflict between two sites at
// once, with a third site receiving both, and checks what every site ends
// with and what the conflict log says.
func TestConflicts_Kinds(t *testing.T) {
	c := newCluster(t, 3, `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL);
		CREATE TABLE kv_lww (k int PRIMARY KEY, v text NOT NULL);`)
	c.extra = []string{"conflicts:", "  tables:", "    kv_lww:", "      delete_policy: lww"}
	for _, tbl := range []string{"kv", "kv_lww"} {
		c.exec(0, fmt.Sprintf(`INSERT INTO %s VALUES (1, 'one'), (3, 'three'), (4, 'four')`, tbl))
	}
	c.waitConverged(30*time.Second, "kv", "kv_lww")

	c.concurrently(
		// update/update: b's is later and wins everywhere.
		siteWrite{0, `UPDATE kv SET v = 'a-update' WHERE k = 1`},
		siteWrite{1, `UPDATE kv SET v = 'b-update' WHERE k = 1`},
		// insert/insert of one key: b's is later and wins.
		siteWrite{0, `INSERT INTO kv VALUES (2, 'a-insert')`},
		siteWrite{1, `INSERT INTO kv VALUES (2, 'b-insert')`},
		// delete, then a later concurrent update: under the default
		// (delete_wins) the row stays deleted; under lww it comes back.
		siteWrite{1, `DELETE FROM kv WHERE k = 3`},
		siteWrite{1, `DELETE FROM kv_lww WHERE k = 3`},
		siteWrite{0, `UPDATE kv SET v = 'a-late-update' WHERE k = 3`},
		siteWrite{0, `UPDATE kv_lww SET v = 'a-late-update' WHERE k = 3`},
		// update, then a later concurrent delete: deleted under both.
		siteWrite{0, `UPDATE kv SET v = 'a-early-update' WHERE k = 4`},
		siteWrite{0, `UPDATE kv_lww SET v = 'a-early-update' WHERE k = 4`},
		siteWrite{1, `DELETE FROM kv WHERE k = 4`},
		siteWrite{1, `DELETE FROM kv_lww WHERE k = 4`},
	)
	c.waitConverged(60*time.Second, "kv", "kv_lww")

	for i := range c.sites {
		got, err := c.queryString(i, `SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM kv`)
		if err != nil {
			t.Fatal(err)
		}
		if want := "1=b-update,2=b-insert"; got != want {
			t.Errorf("site %s kv: got %s, want %s", c.sites[i].name, got, want)
		}
		got, err = c.queryString(i, `SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM kv_lww`)
		if err != nil {
			t.Fatal(err)
		}
		if want := "1=one,3=a-late-update"; got != want {
			t.Errorf("site %s kv_lww: got %s, want %s", c.sites[i].name, got, want)
		}
	}

	// Every site that met both versions of a row logged the conflict, with
	// both versions, the rule and the winner; a, which lost key 1 and 2,
	// logged b's images as the winners and its own as the losers.
	for _, key := range []string{`["1"]`, `["2"]`} {
		cs := c.conflictsFor(0, "public.kv", key)
		if len(cs) != 1 {
			t.Fatalf("site a, kv %s: %d conflicts logged, want 1: %+v", key, len(cs), cs)
		}
		cf := cs[0]
		if cf.Rule != "lww" || cf.Winner != "remote" || len(cf.LocalVersion) == 0 || len(cf.RemoteVersion) == 0 {
			t.Errorf("site a, kv %s: %+v, want rule lww, winner remote, both versions", key, cf)
		}
		if !strings.Contains(string(cf.LocalRow), `"a-`) || !strings.Contains(string(cf.RemoteRow), `"b-`) {
			t.Errorf("site a, kv %s: local row %s, remote row %s; want a's image and b's", key, cf.LocalRow, cf.RemoteRow)
		}
		if cs := c.conflictsFor(1, "public.kv", key); len(cs) != 1 || cs[0].Winner != "local" {
			t.Errorf("site b, kv %s: %+v, want one conflict won locally", key, cs)
		}
		if cs := c.conflictsFor(2, "public.kv", key); len(cs) != 1 {
			t.Errorf("site c, kv %s: %+v, want one conflict", key, cs)
		}
	}
	// The delete that won over a later update says so.
	rules := map[string]bool{}
	for i := range c.sites {
		for _, cf := range c.conflictsFor(i, "public.kv", `["3"]`) {
			rules[cf.Rule] = true
		}
	}
	if !rules["delete_wins"] {
		t.Errorf("kv 3: rules logged %v, want delete_wins at some site", rules)
	}
	// No late update brings a deleted row back: redeliver everything by
	// restarting, and update the survivors once more.
	c.exec(2, `UPDATE kv SET v = v || '!'`)
	c.waitConverged(30*time.Second, "kv", "kv_lww")
	if got, _ := c.queryString(1, `SELECT string_agg(k::text, ',' ORDER BY k) FROM kv`); got != "1,2" {
		t.Errorf("site b kv keys after more writes: %s, want 1,2", got)
	}
}

// TestConflicts_TruncateWhileOthersWrite truncates a table at one site while
// another writes to it: at every site the rows whose versions are older than
// the truncate are gone, and the rows written later anywhere survive.
func TestConflicts_TruncateWhileOthersWrite(t *testing.T) {
	c := newCluster(t, 3, `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL)`)
	c.exec(0, `INSERT INTO kv SELECT g, 'old' FROM generate_series(1, 5) g`)
	c.waitConverged(30*time.Second, "kv")
	c.concurrently(
		siteWrite{1, `INSERT INTO kv VALUES (100, 'b before the truncate')`},
		siteWrite{2, `UPDATE kv SET v = 'c before the truncate' WHERE k = 2`},
		siteWrite{0, `TRUNCATE kv`},
		siteWrite{1, `INSERT INTO kv VALUES (101, 'b after the truncate')`},
		siteWrite{1, `UPDATE kv SET v = 'b after the truncate' WHERE k = 1`},
	)
	c.waitConverged(60*time.Second, "kv")
	for i := range c.sites {
		got, err := c.queryString(i, `SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM kv`)
		if err != nil {
			t.Fatal(err)
		}
		if want := "1=b after the truncate,101=b after the truncate"; got != want {
			t.Errorf("site %s: %s, want %s", c.sites[i].name, got, want)
		}
	}
	// Writes after the truncate, anywhere, behave as usual.
	c.exec(2, `INSERT INTO kv VALUES (3, 'c later')`)
	c.waitConverged(30*time.Second, "kv")
}

// TestConflicts_UniqueAcrossSites inserts two rows with different keys and
// the same e-mail at two sites at once: every site keeps the earlier claim,
// and the other row is in the conflict log and parked, whole, everywhere;
// replication of everything else goes on.
func TestConflicts_UniqueAcrossSites(t *testing.T) {
	c := newCluster(t, 3, `CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text)`)
	c.concurrently(
		siteWrite{0, `INSERT INTO users VALUES (1, 'ann@example.com', 'Ann at a')`},
		siteWrite{1, `INSERT INTO users VALUES (2, 'ann@example.com', 'Ann at b')`},
		siteWrite{1, `INSERT INTO users VALUES (3, 'bob@example.com', 'Bob at b')`},
	)
	c.waitConverged(60*time.Second, "users")
	for i := range c.sites {
		got, err := c.queryString(i, `SELECT string_agg(id || '=' || name, ',' ORDER BY id) FROM users`)
		if err != nil {
			t.Fatal(err)
		}
		if want := "1=Ann at a,3=Bob at b"; got != want {
			t.Errorf("site %s: %s, want %s (the earlier claim of the e-mail stays)", c.sites[i].name, got, want)
		}
		parked, err := c.queryString(i, `SELECT string_agg(key || ': ' || reason, '; ') FROM casualdb.parked WHERE tbl = 'public.users'`)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(parked, `["2"]`) || !strings.Contains(parked, "users_email_key") {
			t.Errorf("site %s: parked %q, want key 2 parked naming users_email_key", c.sites[i].name, parked)
		}
		logged, err := c.queryString(i, `SELECT string_agg(rule || ' ' || winner || ' ' || coalesce(local_row::text, '') || coalesce(remote_row::text, ''), '; ') FROM casualdb.conflict_log WHERE tbl = 'public.users'`)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logged, "unique_earlier_claim") || !strings.Contains(logged, "Ann at b") {
			t.Errorf("site %s: conflict log %q, want the unique rule with b's row image", c.sites[i].name, logged)
		}
	}
	// The stream goes on.
	c.exec(1, `UPDATE users SET name = 'Bob' WHERE id = 3`)
	c.exec(2, `INSERT INTO users VALUES (4, 'cy@example.com', 'Cy')`)
	c.waitConverged(30*time.Second, "users")
	if got, _ := c.queryString(0, `SELECT count(*)::text FROM users`); got != "3" {
		t.Errorf("site a holds %s users after more writes, want 3", got)
	}
}

// TestConflicts_ColumnMerge updates different columns of one row at two
// sites at once: in a table that merges by column both updates survive
// everywhere; in a table that merges by row only the later one does.
func TestConflicts_ColumnMerge(t *testing.T) {
	c := newCluster(t, 3, `CREATE TABLE profile (id int PRIMARY KEY, name text, city text, phone text);
		CREATE TABLE profile_row (id int PRIMARY KEY, name text, city text, phone text);`)
	c.restartWith("conflicts:", "  tables:", "    profile:", "      merge: columns")
	for _, tbl := range []string{"profile", "profile_row"} {
		c.exec(0, fmt.Sprintf(`INSERT INTO %s VALUES (1, 'Ann', 'Oslo', '111')`, tbl))
	}
	c.waitConverged(30*time.Second, "profile", "profile_row")
	c.concurrently(
		siteWrite{0, `UPDATE profile SET city = 'Rome' WHERE id = 1`},
		siteWrite{0, `UPDATE profile_row SET city = 'Rome' WHERE id = 1`},
		siteWrite{1, `UPDATE profile SET phone = '222' WHERE id = 1`},
		siteWrite{1, `UPDATE profile_row SET phone = '222' WHERE id = 1`},
		// Both write name: the later (c's) wins that column.
		siteWrite{2, `UPDATE profile SET name = 'Anne' WHERE id = 1`},
		siteWrite{0, `UPDATE profile SET name = 'Anna' WHERE id = 1`},
	)
	c.waitConverged(60*time.Second, "profile", "profile_row")
	for i := range c.sites {
		got, _ := c.queryString(i, `SELECT name || ',' || city || ',' || phone FROM profile WHERE id = 1`)
		if want := "Anna,Rome,222"; got != want {
			t.Errorf("site %s profile: %s, want %s (each column's last writer)", c.sites[i].name, got, want)
		}
		got, _ = c.queryString(i, `SELECT name || ',' || city || ',' || phone FROM profile_row WHERE id = 1`)
		if want := "Ann,Oslo,222"; got != want {
			t.Errorf("site %s profile_row: %s, want %s (the later row, whole)", c.sites[i].name, got, want)
		}
	}
	rules := map[string]bool{}
	for i := range c.sites {
		for _, cf := range c.conflictsFor(i, "public.profile", `["1"]`) {
			rules[cf.Rule+"/"+cf.Winner] = true
		}
	}
	if !rules["column_merge/merged"] {
		t.Errorf("profile conflicts logged as %v, want column_merge/merged somewhere", rules)
	}
}

// TestConflicts_InsertAndTruncateInOneTransaction replicates one transaction
// that inserts a row into one table and truncates another: applying it saves
// the versions written before the TRUNCATE midway, and its validation once
// compared those with what it had read (none), failed on every attempt, and
// stalled the origin.
func TestConflicts_InsertAndTruncateInOneTransaction(t *testing.T) {
	c := newCluster(t, 2, `CREATE TABLE kv (k int PRIMARY KEY, v text NOT NULL);
		CREATE TABLE notes (id int PRIMARY KEY, note text NOT NULL)`)
	c.exec(0, `INSERT INTO kv SELECT g, 'old' FROM generate_series(1, 3) g`)
	c.waitConverged(30*time.Second, "kv")
	c.exec(0, `BEGIN;
		INSERT INTO notes VALUES (1, 'before the truncate');
		TRUNCATE kv;
		INSERT INTO kv VALUES (10, 'after the truncate');
		COMMIT`)
	c.waitConverged(30*time.Second, "kv", "notes")
	for i := range c.sites {
		got, err := c.queryString(i, `SELECT (SELECT string_agg(k || '=' || v, ',' ORDER BY k) FROM kv) || ';' || (SELECT string_agg(id || '=' || note, ',') FROM notes)`)
		if err != nil {
			t.Fatal(err)
		}
		if want := "10=after the truncate;1=before the truncate"; got != want {
			t.Errorf("site %s: %s, want %s", c.sites[i].name, got, want)
		}
	}
}

// TestConflicts_UniqueClaimThenUpdate is issue 12's first divergence: a
// inserts a row claiming an e-mail, b concurrently inserts another row with
// the same e-mail, later, and a then updates its row (another column). The
// earlier claim (a's) must keep the value at every site: the update does not
// make it a later claim. Then, in a second round, a row updated into a value
// another row claimed concurrently is a new claim at that update's version,
// however old the row is: it loses to the earlier insert, and is removed
// everywhere.
func TestConflicts_UniqueClaimThenUpdate(t *testing.T) {
	c := newCluster(t, 3, barrierSchema+`CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text)`)
	c.concurrently(
		siteWrite{0, `INSERT INTO users VALUES (1, 'ann@example.com', 'Ann at a')`},
		siteWrite{1, `INSERT INTO users VALUES (2, 'ann@example.com', 'Ann at b')`},
		siteWrite{0, `UPDATE users SET name = 'Ann, updated at a' WHERE id = 1`},
	)
	c.barrier(60 * time.Second)
	check := func(round, want string) {
		t.Helper()
		for i := range c.sites {
			got, err := c.queryString(i, `SELECT string_agg(id || '=' || email || '/' || name, ',' ORDER BY id) FROM users`)
			if err != nil {
				t.Fatal(err)
			}
			if got != want {
				t.Errorf("%s: site %s holds %s, want %s", round, c.sites[i].name, got, want)
			}
		}
		if t.Failed() {
			t.FailNow()
		}
	}
	check("claim then update", "1=ann@example.com/Ann, updated at a")
	for i := range c.sites {
		parked, err := c.queryString(i, `SELECT string_agg(key || ': ' || reason, '; ') FROM casualdb.parked WHERE tbl = 'public.users'`)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(parked, `["2"]`) || !strings.Contains(parked, "users_email_key") {
			t.Errorf("site %s: parked %q, want key 2 parked naming users_email_key", c.sites[i].name, parked)
		}
	}
	// Later updates of the holder, anywhere, change nothing.
	c.exec(2, `UPDATE users SET name = 'Ann' WHERE id = 1`)
	c.exec(1, `INSERT INTO users VALUES (3, 'bob@example.com', 'Bob')`)
	c.waitConverged(30*time.Second, "users")
	check("later updates", "1=ann@example.com/Ann,3=bob@example.com/Bob")

	// Row 3 is older than row 4, but b's update of its e-mail into the
	// value that a's row 4 claims concurrently is the later claim.
	c.concurrently(
		siteWrite{0, `INSERT INTO users VALUES (4, 'dee@example.com', 'Dee at a')`},
		siteWrite{1, `UPDATE users SET email = 'dee@example.com' WHERE id = 3`},
		siteWrite{1, `UPDATE users SET name = 'Bob, updated at b' WHERE id = 3`},
		siteWrite{0, `UPDATE users SET name = 'Dee, updated at a' WHERE id = 4`},
	)
	c.barrier(60 * time.Second)
	check("update into a claimed value", "1=ann@example.com/Ann,4=dee@example.com/Dee, updated at a")
	c.exec(2, `INSERT INTO users VALUES (5, 'eve@example.com', 'Eve')`)
	c.waitConverged(30*time.Second, "users")
}
