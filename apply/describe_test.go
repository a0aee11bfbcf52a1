package apply

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/internal/pgtest"
)

// TestDescribeTable describes tables as apply and parked replay see them:
// types with their modifiers, the key in key order (not column order),
// generated and identity columns, and relations that are not tables.
func TestDescribeTable(t *testing.T) {
	pg := pgtest.NewServer(t, "describe")
	conn := pgtest.Connect(t, pg.DSN())
	ctx := context.Background()
	pgtest.ExecAll(t, conn,
		`CREATE TABLE public.t (b text, a int, amount numeric(12,2), dropped int, PRIMARY KEY (a, b))`,
		`ALTER TABLE public.t DROP COLUMN dropped`,
		`CREATE TABLE public.e (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, what text, what_len int GENERATED ALWAYS AS (length(what)) STORED)`,
		`CREATE TABLE public.nokey (x int)`,
		`CREATE VIEW public.v AS SELECT 1 AS one`,
		`CREATE SCHEMA "a.b"`, `CREATE TABLE "a.b".c (id int PRIMARY KEY)`, `CREATE SCHEMA a`, `CREATE TABLE a."b.c" (id int PRIMARY KEY)`,
		`CREATE TABLE "x.y" (id int PRIMARY KEY)`)

	render := func(tb *Table) string {
		var cols []string
		for _, c := range tb.Columns {
			s := c.Name + " " + c.Type
			if c.Key {
				s += " key"
			}
			if c.Generated {
				s += " generated"
			}
			if c.IdentityAlways {
				s += " identity"
			}
			cols = append(cols, s)
		}
		return fmt.Sprintf("%s %s %s table=%v (%s) keys %v", tb, tb.Ident(), tb.Kind, tb.IsTable(), strings.Join(cols, ", "), tb.Keys)
	}
	for _, tt := range []struct{ schema, name, want string }{
		{"public", "t", `public.t "public"."t" r table=true (b text key, a integer key, amount numeric(12,2)) keys [a b]`},
		{"public", "e", `public.e "public"."e" r table=true (id integer key identity, what text, what_len integer generated) keys [id]`},
		{"public", "nokey", `public.nokey "public"."nokey" r table=true (x integer) keys []`},
		{"public", "v", `public.v "public"."v" v table=false (one integer) keys []`},
	} {
		tb, err := DescribeTable(ctx, conn, tt.schema, tt.name)
		if err != nil {
			t.Errorf("%s.%s: %v", tt.schema, tt.name, err)
			continue
		}
		if got := render(tb); got != tt.want {
			t.Errorf("%s.%s:\n got %s\nwant %s", tt.schema, tt.name, got, tt.want)
		}
	}
	if tb, _ := DescribeTable(ctx, conn, "public", "t"); tb != nil {
		if c, ok := tb.Column("amount"); !ok || c.Type != "numeric(12,2)" {
			t.Errorf("Column(amount): got %+v, %v", c, ok)
		}
		if _, ok := tb.Column("dropped"); ok {
			t.Error("Column(dropped): found a dropped column")
		}
	}
	if _, err := DescribeTable(ctx, conn, "public", "nosuch"); !errors.Is(err, casualdb.ErrSchemaMismatch) || !strings.Contains(err.Error(), "public.nosuch does not exist here") {
		t.Errorf("no such table: got %v", err)
	}

	t.Run("FindTable", func(t *testing.T) {
		if tb, err := FindTable(ctx, conn, "public.x.y"); err != nil || tb.Schema != "public" || tb.Name != "x.y" || fmt.Sprint(tb.Keys) != "[id]" {
			t.Errorf("public.x.y: got %+v, %v", tb, err)
		}
		if _, err := FindTable(ctx, conn, "a.b.c"); err == nil || !strings.Contains(err.Error(), "ambiguous here (2 tables)") {
			t.Errorf("a.b.c: got %v, want ambiguous", err)
		}
		for _, name := range []string{"public.nosuch", "public.v"} {
			if _, err := FindTable(ctx, conn, name); !errors.Is(err, casualdb.ErrSchemaMismatch) {
				t.Errorf("%s: got %v, want ErrSchemaMismatch", name, err)
			}
		}
	})
}
