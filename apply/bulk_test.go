package apply

import (
	"fmt"
	"strings"
	"testing"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
)

func bulkTable() (*localTable, casualdb.Relation) {
	lt := &localTable{name: "public.t", ident: `"public"."t"`, cols: map[string]string{"id": "integer", "a": "text", "b": "text"},
		keys: []string{"id"}, keyTyp: []string{"integer"}}
	rel := casualdb.Relation{Table: "public.t", Schema: "public", Name: "t", Columns: []casualdb.Column{
		{Name: "id", Type: "integer", Key: true}, {Name: "a", Type: "text"}, {Name: "b", Type: "text"}}}
	return lt, rel
}

func change(op casualdb.Op, key string, vals ...string) *casualdb.Change {
	c := &casualdb.Change{Table: "public.t", Op: op, Key: []string{key}}
	if op == casualdb.OpDelete {
		return c
	}
	c.Values = []casualdb.Value{{Text: key}}
	for _, v := range vals {
		switch v {
		case "<u>":
			c.Values = append(c.Values, casualdb.Value{Unchanged: true})
		case "<null>":
			c.Values = append(c.Values, casualdb.Value{Null: true})
		default:
			c.Values = append(c.Values, casualdb.Value{Text: v})
		}
	}
	return c
}

// describe renders statements compactly: the SQL verb and columns, and the
// arrays of arguments.
func describe(stmts []stmt) string {
	var out []string
	for _, s := range stmts {
		verb := strings.Fields(s.sql)[0]
		var args []string
		for _, a := range s.args {
			switch a := a.(type) {
			case []string:
				args = append(args, fmt.Sprint(a))
			case []*string:
				var vs []string
				for _, v := range a {
					if v == nil {
						vs = append(vs, "NULL")
					} else {
						vs = append(vs, *v)
					}
				}
				args = append(args, fmt.Sprint(vs))
			}
		}
		out = append(out, fmt.Sprintf("%s %d %s", verb, s.rows, strings.Join(args, " ")))
	}
	return strings.Join(out, "; ")
}

func TestPlan_Statements(t *testing.T) {
	lt, rel := bulkTable()
	type write struct {
		c       *casualdb.Change
		present bool // the row exists before this change
	}
	tests := []struct {
		name   string
		writes []write
		want   string
	}{
		{"one update", []write{{change(casualdb.OpUpdate, "1", "x", "y"), true}},
			"UPDATE 1 [1] [x] [y]"},
		{"one insert", []write{{change(casualdb.OpInsert, "1", "x", "<null>"), false}},
			"INSERT 1 [1] [x] [NULL]"},
		{"one delete", []write{{change(casualdb.OpDelete, "1"), true}},
			"DELETE 1 [1]"},
		{"updates of one row coalesce, later values win", []write{
			{change(casualdb.OpUpdate, "1", "x", "y"), true},
			{change(casualdb.OpUpdate, "1", "x2", "y2"), true}},
			"UPDATE 1 [1] [x2] [y2]"},
		{"an unchanged value keeps the earlier one", []write{
			{change(casualdb.OpUpdate, "1", "x", "y"), true},
			{change(casualdb.OpUpdate, "1", "x2", "<u>"), true}},
			"UPDATE 1 [1] [x2] [y]"},
		{"only unchanged values of a present row: the columns written are set", []write{
			{change(casualdb.OpUpdate, "1", "x", "<u>"), true}},
			"UPDATE 1 [1] [x]"},
		{"insert then update: one insert of the final image", []write{
			{change(casualdb.OpInsert, "1", "x", "y"), false},
			{change(casualdb.OpUpdate, "1", "x2", "<u>"), true}},
			"INSERT 1 [1] [x2] [y]"},
		{"insert then delete: nothing", []write{
			{change(casualdb.OpInsert, "1", "x", "y"), false},
			{change(casualdb.OpDelete, "1"), true}},
			""},
		{"delete then insert of a present row: an update of every column", []write{
			{change(casualdb.OpDelete, "1"), true},
			{change(casualdb.OpInsert, "1", "x", "<null>"), false}},
			"UPDATE 1 [1] [x] [NULL]"},
		{"rows group by kind and columns; deletes, updates, inserts", []write{
			{change(casualdb.OpInsert, "3", "c", "c"), false},
			{change(casualdb.OpUpdate, "1", "a", "<u>"), true},
			{change(casualdb.OpUpdate, "2", "b", "<u>"), true},
			{change(casualdb.OpUpdate, "4", "d", "d"), true},
			{change(casualdb.OpDelete, "5"), true}},
			"DELETE 1 [5]; UPDATE 1 [4] [d] [d]; UPDATE 2 [1 2] [a b]; INSERT 1 [3] [c] [c]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var p plan
			for _, w := range tt.writes {
				p.write(meta.RowKey{Table: "public.t", Key: casualdb.KeyString(w.c.Key)}, lt, rel, w.c, w.present)
			}
			if got := describe(p.statements()); got != tt.want {
				t.Fatalf("got  %s\nwant %s", got, tt.want)
			}
			if !p.empty() {
				t.Fatalf("plan not emptied")
			}
		})
	}
}

func TestPlan_SQL(t *testing.T) {
	lt, rel := bulkTable()
	var p plan
	p.write(meta.RowKey{Table: "public.t", Key: `["1"]`}, lt, rel, change(casualdb.OpUpdate, "1", "x", "y"), true)
	p.write(meta.RowKey{Table: "public.t", Key: `["2"]`}, lt, rel, change(casualdb.OpInsert, "2", "x", "y"), false)
	p.write(meta.RowKey{Table: "public.t", Key: `["3"]`}, lt, rel, change(casualdb.OpDelete, "3"), true)
	got := p.statements()
	want := []string{
		`DELETE FROM "public"."t" t USING unnest($1::text[]) AS u(k0) WHERE (t."id") = (CAST(u.k0 AS integer))`,
		`UPDATE "public"."t" t SET "a" = CAST(u.c1 AS text), "b" = CAST(u.c2 AS text) FROM unnest($1::text[], $2::text[], $3::text[]) AS u(k0, c1, c2) WHERE (t."id") = (CAST(u.k0 AS integer))`,
		`INSERT INTO "public"."t" ("id", "a", "b") SELECT CAST(u.c0 AS integer), CAST(u.c1 AS text), CAST(u.c2 AS text) FROM unnest($1::text[], $2::text[], $3::text[]) AS u(c0, c1, c2)`,
	}
	if len(got) != len(want) {
		t.Fatalf("got %d statements, want %d", len(got), len(want))
	}
	for i := range want {
		if got[i].sql != want[i] {
			t.Errorf("statement %d:\n got %s\nwant %s", i, got[i].sql, want[i])
		}
	}
}

// TestPlan_MixedDescriptions: two transactions of one run describe the table
// differently (the origin dropped a column between them, or a peer says
// so). Their rows go in separate statements, each with its own column
// positions: once they shared the first row's, and apply read past the
// other row's values (a panic) or wrote a value into the wrong column.
func TestPlan_MixedDescriptions(t *testing.T) {
	lt, wide := bulkTable()
	narrow := wide
	narrow.Columns = []casualdb.Column{wide.Columns[0], wide.Columns[2]} // id, b
	c1 := change(casualdb.OpUpdate, "1", "<u>", "b1")                    // id, a unchanged, b
	c2 := &casualdb.Change{Table: "public.t", Op: casualdb.OpUpdate, Key: []string{"2"}, Values: []casualdb.Value{{Text: "2"}, {Text: "b2"}}}
	for _, order := range []string{"wide first", "narrow first"} {
		t.Run(order, func(t *testing.T) {
			var p plan
			w1 := func() { p.write(meta.RowKey{Table: "public.t", Key: `["1"]`}, lt, wide, c1, true) }
			w2 := func() { p.write(meta.RowKey{Table: "public.t", Key: `["2"]`}, lt, narrow, c2, true) }
			if order == "wide first" {
				w1()
				w2()
			} else {
				w2()
				w1()
			}
			stmts := p.statements()
			if got, want := describe(stmts), "UPDATE 1 [1] [b1]; UPDATE 1 [2] [b2]"; got != want {
				t.Fatalf("got  %s\nwant %s", got, want)
			}
			for _, s := range stmts {
				if !strings.Contains(s.sql, `"b" = CAST`) || strings.Contains(s.sql, `"a" = CAST`) {
					t.Errorf("%s: want b set, a not", s.sql)
				}
			}
		})
	}
}
