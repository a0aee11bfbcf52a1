package meta_test

import (
	"context"
	"strings"
	"testing"

	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/meta"
)

// TestKeyLookupParams_IndexPlanOnceTableGrows checks that a session with
// KeyLookupParams looks versions up through the primary key even with a
// plan made while casualdb.row_version was empty. A fresh site's apply and
// capture prepare their lookups then; a generic plan kept from that time
// scanned the whole table for every key once it had grown (a throttled
// benchmark on fresh sites spent 40 s of 46 in that statement).
func TestKeyLookupParams_IndexPlanOnceTableGrows(t *testing.T) {
	pg := pgtest.NewServer(t, "meta")
	conn := pgtest.Connect(t, pg.DSN())
	ctx := context.Background()
	if err := meta.Install(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `VACUUM ANALYZE casualdb.row_version`); err != nil {
		t.Fatal(err)
	}
	for k, v := range meta.KeyLookupParams {
		if _, err := conn.Exec(ctx, `SELECT set_config($1, $2, false)`, k, v); err != nil {
			t.Fatal(err)
		}
	}
	// The worst case of the plan cache: one plan for every execution.
	if _, err := conn.Exec(ctx, `SET plan_cache_mode = force_generic_plan`); err != nil {
		t.Fatal(err)
	}
	sql, _ := meta.VersionsQuery([]meta.RowKey{{Table: "public.t", Key: `["1"]`}})
	if _, err := conn.Exec(ctx, `PREPARE lookup(text[], text[]) AS `+sql); err != nil {
		t.Fatal(err)
	}
	// Planned now, on the empty table.
	if _, err := conn.Exec(ctx, `EXECUTE lookup('{public.t}', '{"[\"1\"]"}')`); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, `INSERT INTO casualdb.row_version (tbl, key, hlc_wall, hlc_logical, origin, vclock)
		SELECT 'public.t', '["' || g || '"]', 1, 0, 'a', '{"a": 1}' FROM generate_series(1, 20000) g`); err != nil {
		t.Fatal(err)
	}
	rows, err := conn.Query(ctx, `EXPLAIN EXECUTE lookup('{public.t,public.t}', '{"[\"1\"]","[\"2\"]"}')`)
	if err != nil {
		t.Fatal(err)
	}
	var plan []string
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
	if strings.Contains(text, "Seq Scan on row_version") || !strings.Contains(text, "Index Cond") {
		t.Fatalf("version lookup does not probe the primary key:\n%s", text)
	}
}
