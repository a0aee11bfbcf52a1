package integration

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/ship"
	"github.com/nats-io/nats.go"
)

// runOnce runs "casualdb run" with the given config and expects it to exit
// (not serve) with a non-zero code; it returns the output.
func runOnce(t *testing.T, config string) string {
	t.Helper()
	dir := t.TempDir()
	path := filepath.Join(dir, "casualdb.yml")
	if err := os.WriteFile(path, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary, "run", "--config", path)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("casualdb run did not exit: %s", out.String())
	}
	if err == nil {
		t.Fatalf("casualdb run exited 0; want an error\n%s", out.String())
	}
	return out.String()
}

func minimalConfig(t *testing.T, dsn, extra string) string {
	port, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("site: a\ndata_dir: %s\ndatabase:\n  dsn: %s\n  connect_timeout: 3s\nnats:\n  listen: 127.0.0.1:%d\nadmin:\n  listen: ''\n%s", t.TempDir(), dsn, port, extra)
}

func TestBadInput_Startup(t *testing.T) {
	pg := pgtest.NewServer(t, "bad")
	if err := pg.Exec(context.Background(), `CREATE TABLE nopk (a int); CREATE TABLE ok (id int PRIMARY KEY)`); err != nil {
		t.Fatal(err)
	}
	closedPort, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, config string
		want         []string
	}{
		{"unreachable database", minimalConfig(t, fmt.Sprintf("postgres://postgres@127.0.0.1:%d/postgres", closedPort), ""), []string{"connect to database (database.dsn)"}},
		{"table without primary key", minimalConfig(t, pg.DSN(), "") + "", nil},
		{"missing site", "database:\n  dsn: " + pg.DSN() + "\n", []string{"site: required"}},
		{"unknown key", minimalConfig(t, pg.DSN(), "bogus: 1\n"), []string{"field bogus not found"}},
		{"bad peer url", minimalConfig(t, pg.DSN(), "peers:\n  - name: b\n    nats_url: http://x\n"), []string{"peers[0].nats_url"}},
	}
	// The table-without-key case names the table in database.tables.
	tests[1].config = strings.Replace(minimalConfig(t, pg.DSN(), ""), "  connect_timeout: 3s\n", "  connect_timeout: 3s\n  tables: [ok, nopk]\n", 1)
	tests[1].want = []string{"table has no primary key", "public.nopk"}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out := runOnce(t, tt.config)
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

func TestBadInput_WALLevel(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pg, err := pgtest.Start(ctx, pgtest.Options{Dir: t.TempDir(), Name: "replica", Settings: map[string]string{"wal_level": "replica"}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	defer pg.Stop(context.Background())
	out := runOnce(t, minimalConfig(t, pg.DSN(), ""))
	for _, w := range []string{"wal_level is \"replica\"", "ALTER SYSTEM SET wal_level = logical"} {
		if !strings.Contains(out, w) {
			t.Errorf("output lacks %q:\n%s", w, out)
		}
	}
}

func status(t *testing.T, c *cluster, i int) map[string]any {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/status", c.sites[i].adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var st map[string]any
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		t.Fatal(err)
	}
	return st
}

func metrics(t *testing.T, c *cluster, i int) string {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/metrics", c.sites[i].adminPort))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// TestBadInput_GarbledAndSchemaMismatch sends a garbled message to a site's
// inbox and replicates a table whose columns differ at one site: both are
// parked and counted, and the rest keeps flowing.
func TestBadInput_GarbledAndSchemaMismatch(t *testing.T) {
	c := newCluster(t, 3, `CREATE TABLE good (id int PRIMARY KEY, v text); CREATE TABLE differs (id int PRIMARY KEY, v text, extra int)`)
	// Site c lacks column "extra".
	c.exec(2, `ALTER TABLE differs DROP COLUMN extra`)

	nc := c.natsAs(1, "a") // as peer a: its own inbox subject at b
	js, err := nc.JetStream()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := js.Publish("casualdb.in.b.a", []byte("\x00not a transaction{")); err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg("casualdb.in.b.a")
	m.Header.Set("Casualdb-Origin", "a")
	m.Header.Set("Casualdb-Seq", "999")
	m.Data = []byte(`{"origin":"a","lsn":1,"changes":[{"table":"nowhere","op":"I"}]}`)
	if _, err := js.PublishMsg(m); err != nil {
		t.Fatal(err)
	}
	// A well-framed bundle whose two transactions do not decode: each is
	// parked on its own, with its sequence.
	bundle := nats.NewMsg("casualdb.in.b.a")
	bundle.Header.Set("Casualdb-Origin", "a")
	bundle.Header.Set(ship.HeaderBundle, "2")
	bundle.Data = ship.AppendEntry(nil, ship.Entry{Seq: 997, Data: []byte(`not json`)})
	bundle.Data = ship.AppendEntry(bundle.Data, ship.Entry{Seq: 998, Data: []byte(`{"origin":"z","lsn":5,"changes":[]}`)})
	if _, err := js.PublishMsg(bundle); err != nil {
		t.Fatal(err)
	}

	c.exec(0, `INSERT INTO differs VALUES (1, 'x', 7)`)
	c.exec(0, `INSERT INTO good VALUES (1, 'after garbage')`)
	c.waitConverged(30*time.Second, "good")
	pgtest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		got, err := c.queryString(1, `SELECT count(*)::text FROM casualdb.parked WHERE reason LIKE 'garbled message%'`)
		if err != nil || got != "4" {
			return fmt.Errorf("site b: %s garbled messages parked, %v; want 4", got, err)
		}
		got, err = c.queryString(1, `SELECT string_agg(seq::text, ',' ORDER BY seq) FROM casualdb.parked WHERE seq IN (997, 998)`)
		if err != nil || got != "997,998" {
			return fmt.Errorf("site b: bundle entries parked with seqs %q, %v; want 997,998", got, err)
		}
		got, err = c.queryString(2, `SELECT reason FROM casualdb.parked WHERE tbl = 'public.differs'`)
		if err != nil || !strings.Contains(got, "lacks column(s) extra") {
			return fmt.Errorf("site c: parked reason %q, %v", got, err)
		}
		return nil
	})
	// Site b has the column: the row is there.
	if got, _ := c.queryString(1, `SELECT v || extra FROM differs WHERE id = 1`); got != "x7" {
		t.Errorf("site b: differs row = %q, want x7", got)
	}
	st := status(t, c, 1)
	if ap := st["apply"].(map[string]any); ap["garbled_messages"].(float64) != 4 {
		t.Errorf("site b status: garbled_messages = %v, want 4", ap["garbled_messages"])
	}
	if m := metrics(t, c, 2); !strings.Contains(m, "casualdb_parked_total 1") {
		t.Errorf("site c metrics lack casualdb_parked_total 1:\n%s", m)
	}
	// Parked with everything needed to replay it.
	payload, _ := c.queryString(2, `SELECT convert_from(payload, 'UTF8') FROM casualdb.parked WHERE tbl = 'public.differs'`)
	if !strings.Contains(payload, `"extra"`) || !strings.Contains(payload, `"7"`) {
		t.Errorf("parked payload lacks the change: %s", payload)
	}
}

// TestToast_UnchangedValueKept updates another column of a row whose large
// value PostgreSQL stores out of line (TOAST): the WAL does not carry the
// unchanged value, and peers must keep theirs, never write NULL.
func TestToast_UnchangedValueKept(t *testing.T) {
	c := newCluster(t, 3, `CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
		ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;`)
	c.exec(0, `INSERT INTO docs SELECT 1, string_agg(md5(i::text), '') , 0 FROM generate_series(1, 2000) i`)
	c.waitConverged(30*time.Second, "docs")
	// Concurrent updates: whichever wins, the site where it loses needs
	// the winner's body, which the WAL only carries through the old row.
	c.concurrently(
		siteWrite{0, `UPDATE docs SET n = n + 1 WHERE id = 1`},
		siteWrite{1, `UPDATE docs SET n = n + 10 WHERE id = 1`})
	c.waitConverged(30*time.Second, "docs")
	for i := range c.sites {
		// database.toast_full_identity (the default) is what makes the
		// concurrent case converge: the old row carries the value.
		if got, err := c.queryString(i, `SELECT relreplident::text FROM pg_class WHERE relname = 'docs'`); err != nil || got != "f" {
			t.Errorf("site %s: replica identity %q, %v; want f (full)", c.sites[i].name, got, err)
		}
		if got, err := c.queryString(i, `SELECT count(*)::text FROM casualdb.parked`); err != nil || got != "0" {
			t.Errorf("site %s: %s changes parked, %v; want none", c.sites[i].name, got, err)
		}
		got, err := c.queryString(i, `SELECT length(body)::text FROM docs WHERE id = 1`)
		if err != nil || got != "64000" {
			t.Errorf("site %s: body length %s, %v; want 64000", c.sites[i].name, got, err)
		}
	}
}
