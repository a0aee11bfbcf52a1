package apply

import (
	"context"
	"strings"
	"testing"

	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// TestKeyRowsQuery_ProbesKeysOnGrownTable runs presentQuery and lockQuery
// against a real table: they return exactly the rows of the given keys,
// names of the query cannot collide with a user's (a table "u" with a
// column "casualdb_k0" is not confused with the key array), and a plan made
// while the table was empty still probes the primary key once it has grown
// (a join of the key array to the table kept a plan that scanned the whole
// table for every key).
func TestKeyRowsQuery_ProbesKeysOnGrownTable(t *testing.T) {
	pg := pgtest.NewServer(t, "keyrows")
	conn := pgtest.Connect(t, pg.DSN())
	ctx := context.Background()
	for _, sql := range []string{
		`CREATE TABLE public.u (a integer, casualdb_k0 text, b text, v text, PRIMARY KEY (a, b))`,
		`VACUUM ANALYZE public.u`,
	} {
		if _, err := conn.Exec(ctx, sql); err != nil {
			t.Fatal(err)
		}
	}
	for k, v := range meta.KeyLookupParams {
		if _, err := conn.Exec(ctx, `SELECT set_config($1, $2, false)`, k, v); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `SET plan_cache_mode = force_generic_plan`); err != nil {
		t.Fatal(err)
	}
	lt := &localTable{name: "public.u", ident: pgx.Identifier{"public", "u"}.Sanitize(),
		cols: map[string]string{"a": "integer", "casualdb_k0": "text", "b": "text", "v": "text"},
		keys: []string{"a", "b"}, keyTyp: []string{"integer", "text"}}
	keys := [][]string{{"2", "y"}, {"1", "x"}, {"3", "none"}}

	lock, args := lockQuery(lt, keys)
	present, _ := presentQuery(lt, keys)
	// Planned now, on the empty table.
	for name, sql := range map[string]string{"lock_rows": lock, "present_rows": present} {
		if _, err := conn.Exec(ctx, `PREPARE `+name+` AS `+sql); err != nil {
			t.Fatalf("prepare %s: %v\n%s", name, err, sql)
		}
		if _, err := conn.Exec(ctx, `EXECUTE `+name+`('{1}', '{x}')`); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := conn.Exec(ctx, `INSERT INTO public.u SELECT g, 'k' || g, chr(120 + g % 2), 'v' FROM generate_series(1, 20000) g`); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"lock_rows", "present_rows"} {
		var plan []string
		rows, err := conn.Query(ctx, `EXPLAIN EXECUTE `+name+`('{1,2}', '{x,y}')`)
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var line string
			if err := rows.Scan(&line); err != nil {
				t.Fatal(err)
			}
			plan = append(plan, line)
		}
		if err := rows.Err(); err != nil {
			t.Fatal(err)
		}
		text := strings.Join(plan, "\n")
		if strings.Contains(text, "Seq Scan on u") || !strings.Contains(text, "Index Cond") {
			t.Fatalf("%s does not probe the primary key:\n%s", name, text)
		}
	}

	// Rows (1,'y') and (2,'x') exist; (1,'x'), (2,'y') do not (b alternates
	// with a's parity: 1 -> 'y', 2 -> 'x').
	keys = [][]string{{"2", "x"}, {"1", "y"}, {"1", "x"}, {"3", "none"}}
	lock, args = lockQuery(lt, keys)
	tx, err := conn.Begin(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback(ctx)
	rows, err := tx.Query(ctx, lock, args...)
	if err != nil {
		t.Fatal(err)
	}
	got, err := scanLocked(lt, rows)
	if err != nil {
		t.Fatal(err)
	}
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
