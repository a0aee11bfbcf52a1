package apply

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// TestKeyRowsQuery_ProbesKeysOnGrownTable runs presentQuery and lockQuery
// against a real table: they return exactly the rows of the given keys,
// names of the query cannot collide with a user's (a table "casualdb_keys"
// with a column "casualdb_k0" is not confused with the key array), and a plan made
// while the table was empty still probes the primary key once it has grown
// (a join of the key array to the table kept a plan that scanned the whole
// table for every key).
func TestKeyRowsQuery_ProbesKeysOnGrownTable(t *testing.T) {
	pg := pgtest.NewServer(t, "keyrows")
	conn := pgtest.Connect(t, pg.DSN())
	ctx := context.Background()
	pgtest.ExecAll(t, conn,
		`CREATE TABLE public.casualdb_keys (a integer, casualdb_k0 text, b text, v text, PRIMARY KEY (a, b))`,
		`VACUUM ANALYZE public.casualdb_keys`,
		`SET plan_cache_mode = force_generic_plan`)
	pgtest.SetParams(t, conn, meta.KeyLookupParams)
	lt := &localTable{name: "public.casualdb_keys", ident: pgx.Identifier{"public", "casualdb_keys"}.Sanitize(),
		cols: map[string]string{"a": "integer", "casualdb_k0": "text", "b": "text", "v": "text"},
		keys: []string{"a", "b"}, keyTyp: []string{"integer", "text"}}
	keys := [][]string{{"2", "y"}, {"1", "x"}, {"3", "none"}}

	lock, args := lockQuery(lt, keys)
	present, _ := presentQuery(lt, keys)
	// Planned now, on the empty table.
	for name, sql := range map[string]string{"lock_rows": lock, "present_rows": present} {
		pgtest.ExecAll(t, conn, `PREPARE `+name+` AS `+sql, `EXECUTE `+name+`('{1}', '{x}')`)
	}
	pgtest.ExecAll(t, conn, `INSERT INTO public.casualdb_keys SELECT g, 'k' || g, chr(120 + g % 2), 'v' FROM generate_series(1, 20000) g`)
	for _, name := range []string{"lock_rows", "present_rows"} {
		text := pgtest.Plan(t, conn, `EXECUTE `+name+`('{1,2}', '{x,y}')`)
		if strings.Contains(text, "Seq Scan on casualdb_keys") || !strings.Contains(text, "Index Cond") {
			t.Fatalf("%s does not probe the primary key:\n%s", name, text)
		}
	}

	// Rows (1,'y') and (2,'x') exist; (1,'x'), (2,'y') do not (b alternates
	// with a's parity: 1 -> 'y', 2 -> 'x').
	keys = [][]string{{"2", "x"}, {"1", "y"}, {"1", "x"}, {"3", "none"}}
	tx, got := lockRows(t, conn, lt, keys)
	if len(got) != 2 || got[`["1","y"]`] == 0 || got[`["2","x"]`] == 0 {
		t.Fatalf("locked %v; want the xmins of (1,y) and (2,x)", got)
	}
	present, args = presentQuery(lt, keys)
	var n int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM (`+present+`) p`, args...).Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Fatalf("presentQuery found %d rows; want 2", n)
	}
}

// TestLockQuery_LocksInKeyOrder checks that apply locks rows in the order of
// their typed keys (9 before 10), as a local UPDATE scanning the primary key
// does: sorted as text ("10" before "9") the two deadlocked.
func TestLockQuery_LocksInKeyOrder(t *testing.T) {
	pg := pgtest.NewServer(t, "keyorder")
	ctx := context.Background()
	local := pgtest.Connect(t, pg.DSN())
	applyConn := pgtest.Connect(t, pg.DSN())
	pgtest.ExecAll(t, local,
		`CREATE TABLE public.t (id integer PRIMARY KEY, v text)`,
		`INSERT INTO public.t SELECT g, 'v' FROM generate_series(1, 20) g`)
	lt := &localTable{name: "public.t", ident: pgx.Identifier{"public", "t"}.Sanitize(),
		cols: map[string]string{"id": "integer", "v": "text"}, keys: []string{"id"}, keyTyp: []string{"integer"}}

	ltx, err := local.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ltx.Rollback(ctx)
	if _, err := ltx.Exec(ctx, `SELECT 1 FROM public.t WHERE id = 10 FOR UPDATE`); err != nil {
		t.Fatal(err)
	}
	var pid int
	if err := applyConn.QueryRow(ctx, `SELECT pg_backend_pid()`).Scan(&pid); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	// Whatever happens below, the lock query ends (the local lock goes)
	// before the connections close.
	t.Cleanup(func() {
		_ = ltx.Rollback(context.Background())
		<-done
	})
	go func() {
		tx, err := applyConn.Begin(ctx)
		if err != nil {
			done <- err
			return
		}
		q, args := lockQuery(lt, [][]string{{"10"}, {"9"}})
		rows, err := tx.Query(ctx, q, args...)
		if err == nil {
			_, err = scanLocked(lt, rows)
		}
		_ = tx.Rollback(ctx)
		done <- err
	}()
	// Wait until apply's session waits for row 10.
	pgtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		var waiting bool
		if err := local.QueryRow(ctx, `SELECT coalesce(wait_event_type = 'Lock', false) FROM pg_stat_activity WHERE pid = $1`, pid).Scan(&waiting); err != nil {
			return err
		}
		if !waiting {
			return errors.New("apply's session does not wait for a lock yet")
		}
		return nil
	})
	// It holds 9 already: locked in key order.
	_, err = ltx.Exec(ctx, `SELECT 1 FROM public.t WHERE id = 9 FOR UPDATE NOWAIT`)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "55P03" {
		t.Fatalf("locking row 9 while apply waits for 10: %v; want lock_not_available (apply locks 9 first)", err)
	}
	if err := ltx.Rollback(ctx); err != nil {
		t.Fatal(err)
	}
	err = <-done
	done <- err // for the cleanup
	if err != nil {
		t.Fatalf("apply's lock query: %v", err)
	}
}

// TestLockQuery_KeysAsPgoutputWritesThem: the lock query returns each key as
// pgoutput ships it (the type's output function), so that apply finds rows
// keyed by bool, char(n) or inet: a cast to text writes "true", drops the
// padding and adds "/32".
func TestLockQuery_KeysAsPgoutputWritesThem(t *testing.T) {
	pg := pgtest.NewServer(t, "keytext")
	conn := pgtest.Connect(t, pg.DSN())
	pgtest.ExecAll(t, conn,
		`CREATE TABLE public.k (flag boolean, code char(4), addr inet, v text, PRIMARY KEY (flag, code, addr))`,
		`INSERT INTO public.k VALUES (true, 'ab', '10.0.0.1', 'x')`)
	lt := &localTable{name: "public.k", ident: pgx.Identifier{"public", "k"}.Sanitize(),
		cols: map[string]string{"flag": "boolean", "code": "character(4)", "addr": "inet", "v": "text"},
		keys: []string{"flag", "code", "addr"}, keyTyp: []string{"boolean", "character(4)", "inet"}}
	_, got := lockRows(t, conn, lt, [][]string{{"t", "ab  ", "10.0.0.1"}})
	if _, ok := got[`["t","ab  ","10.0.0.1"]`]; !ok || len(got) != 1 {
		t.Fatalf("locked %v; want the row under the key pgoutput ships, [\"t\",\"ab  \",\"10.0.0.1\"]", got)
	}
}

// lockRows runs lockQuery for keys in a transaction that ends with the
// test, and returns it with what scanLocked read.
func lockRows(t *testing.T, conn *pgx.Conn, lt *localTable, keys [][]string) (pgx.Tx, map[string]uint32) {
	t.Helper()
	ctx := context.Background()
	lock, args := lockQuery(lt, keys)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tx.Rollback(context.Background()) })
	rows, err := tx.Query(ctx, lock, args...)
	if err != nil {
		t.Fatal(err)
	}
	got, err := scanLocked(lt, rows)
	if err != nil {
		t.Fatal(err)
	}
	return tx, got
}
