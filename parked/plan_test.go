package parked

import (
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
)

func TestUpsert(t *testing.T) {
	keyOnly := &apply.Table{Schema: "public", Name: "k", Kind: "r", Keys: []string{"a", "b"},
		Columns: []apply.Column{{Name: "a", Type: "integer", Key: true}, {Name: "b", Type: "text", Key: true}}}
	got, err := upsert(keyOnly, []string{"a", "b"}, "VALUES (1, 2)")
	if want := `INSERT INTO "public"."k" ("a", "b") VALUES (1, 2) ON CONFLICT ("a", "b") DO UPDATE SET "a" = EXCLUDED."a", "b" = EXCLUDED."b" RETURNING xmax = 0`; err != nil || got != want {
		t.Errorf("key only:\n got %s (%v)\nwant %s", got, err, want)
	}
	identity := &apply.Table{Schema: "public", Name: "e", Kind: "r", Keys: []string{"id"},
		Columns: []apply.Column{{Name: "id", Type: "integer", Key: true, IdentityAlways: true}, {Name: "what", Type: "text"}}}
	got, err = upsert(identity, []string{"id", "what"}, "VALUES (1, 2)")
	if want := `INSERT INTO "public"."e" ("id", "what") OVERRIDING SYSTEM VALUE VALUES (1, 2) ON CONFLICT ("id") DO UPDATE SET "what" = EXCLUDED."what" RETURNING xmax = 0`; err != nil || got != want {
		t.Errorf("identity:\n got %s (%v)\nwant %s", got, err, want)
	}
	if got, err = upsert(identity, []string{"id"}, "VALUES (1)"); err != nil || !strings.Contains(got, "DO NOTHING") {
		t.Errorf("identity key only: got %s (%v), want DO NOTHING", got, err)
	}
	if _, err := upsert(identity, []string{"what"}, "VALUES (1)"); !errors.Is(err, casualdb.ErrSchemaMismatch) {
		t.Errorf("key not written: got %v", err)
	}
	if _, err := upsert(&apply.Table{Schema: "public", Name: "n", Columns: keyOnly.Columns}, []string{"a"}, "VALUES (1)"); !errors.Is(err, casualdb.ErrNoPrimaryKey) {
		t.Errorf("no primary key: got %v", err)
	}
}

// TestChangeWrite builds the writes of parked changes against a table
// described as apply describes it, and the refusals that need no database.
func TestChangeWrite(t *testing.T) {
	tb := &apply.Table{Schema: "public", Name: "t", Kind: "r", Keys: []string{"id"},
		Columns: []apply.Column{{Name: "id", Type: "integer", Key: true}, {Name: "amount", Type: "numeric(12,2)"}, {Name: "note", Type: "text"}}}
	rel := casualdb.Relation{Table: "public.t", Schema: "public", Name: "t", Columns: []casualdb.Column{
		{Name: "id", Type: "integer", Key: true}, {Name: "amount", Type: "numeric"}, {Name: "note", Type: "text"}}}
	vals := func(v ...casualdb.Value) []casualdb.Value { return v }
	w, err := changeWrite(tb, rel, casualdb.Change{Op: casualdb.OpUpdate, Key: []string{"1"}, Values: vals(casualdb.Value{Text: "1"}, casualdb.Value{Text: "2.50"}, casualdb.Value{Null: true})})
	if want := `INSERT INTO "public"."t" ("id", "amount", "note") VALUES (CAST($1::text AS integer), CAST($2::text AS numeric(12,2)), CAST($3::text AS text)) ON CONFLICT ("id") DO UPDATE SET "amount" = EXCLUDED."amount", "note" = EXCLUDED."note" RETURNING xmax = 0`; err != nil || w.sql != want || fmt.Sprint(w.args) != "[1 2.50 <nil>]" || w.del {
		t.Errorf("update:\n got %+v (%v)\nwant %s", w, err, want)
	}
	w, err = changeWrite(tb, rel, casualdb.Change{Op: casualdb.OpDelete, Key: []string{"1"}})
	if want := `DELETE FROM "public"."t" WHERE "id" = CAST($1::text AS integer) RETURNING false`; err != nil || w.sql != want || !w.del {
		t.Errorf("delete:\n got %+v (%v)\nwant %s", w, err, want)
	}
	for _, tt := range []struct {
		name string
		c    casualdb.Change
		is   error
		want string
	}{
		{"unchanged TOAST", casualdb.Change{Op: casualdb.OpUpdate, Key: []string{"1"}, Values: vals(casualdb.Value{Text: "1"}, casualdb.Value{Text: "2"}, casualdb.Value{Unchanged: true})},
			casualdb.ErrUnchangedToast, "the value of note"},
		{"counter", casualdb.Change{Op: casualdb.OpUpdate, Key: []string{"1"}, Deltas: map[string]string{"amount": "1"}, Values: vals(casualdb.Value{Text: "1"}, casualdb.Value{Text: "2"}, casualdb.Value{})},
			ErrNotReplayable, "counter column(s) amount"},
		{"values", casualdb.Change{Op: casualdb.OpInsert, Key: []string{"1"}, Values: vals(casualdb.Value{Text: "1"})}, ErrNotReplayable, "1 values for 3 columns"},
		{"delete key", casualdb.Change{Op: casualdb.OpDelete, Key: []string{"1", "2"}}, ErrNotReplayable, "2 key values for 1 key columns"},
	} {
		if _, err := changeWrite(tb, rel, tt.c); !errors.Is(err, tt.is) || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: got %v, want %v with %q", tt.name, err, tt.is, tt.want)
		}
	}
	wide := rel
	wide.Columns = append(wide.Columns[:3:3], casualdb.Column{Name: "tag", Type: "text"})
	if _, err := changeWrite(tb, wide, casualdb.Change{Op: casualdb.OpInsert, Key: []string{"1"}, Values: vals(casualdb.Value{Text: "1"}, casualdb.Value{}, casualdb.Value{}, casualdb.Value{Text: "x"})}); !errors.Is(err, casualdb.ErrSchemaMismatch) || !strings.Contains(err.Error(), "lacks column(s) tag that the change writes") {
		t.Errorf("missing column: got %v", err)
	}
}

func TestRemovedRowWrite(t *testing.T) {
	tb := &apply.Table{Schema: "public", Name: "e", Kind: "r", Keys: []string{"id"},
		Columns: []apply.Column{{Name: "id", Type: "integer", Key: true, IdentityAlways: true}, {Name: "what", Type: "text"}, {Name: "what_len", Type: "integer", Generated: true}}}
	w, err := removedRowWrite(tb, []byte(`{"what_len": 4, "what": "halt", "id": 101}`))
	if want := `INSERT INTO "public"."e" ("id", "what") OVERRIDING SYSTEM VALUE SELECT r."id", r."what" FROM json_populate_record(NULL::"public"."e", $1::json) AS r ON CONFLICT ("id") DO UPDATE SET "what" = EXCLUDED."what" RETURNING xmax = 0`; err != nil || w.sql != want {
		t.Errorf("got %+v (%v)\nwant %s", w, err, want)
	}
	if _, err := removedRowWrite(tb, []byte(`{"id": 1, "gone": 2, "also": 3}`)); !errors.Is(err, casualdb.ErrSchemaMismatch) || !strings.Contains(err.Error(), "lacks column(s) also, gone that the row has") {
		t.Errorf("missing columns: got %v", err)
	}
	if _, err := removedRowWrite(tb, []byte(`[1]`)); !errors.Is(err, ErrNotReplayable) {
		t.Errorf("not an object: got %v", err)
	}
}

func TestShortReason(t *testing.T) {
	if got := ShortReason("a\n\tb  c"); got != "a b c" {
		t.Errorf("got %q, want it on one line", got)
	}
	long := strings.Repeat("ü", ReasonWidth+1)
	if got := ShortReason(long); got != strings.Repeat("ü", ReasonWidth-1)+"…" {
		t.Errorf("got %q, want %d characters ending in …", got, ReasonWidth)
	}
	if got := ShortReason(long[:2*ReasonWidth]); got != long[:2*ReasonWidth] {
		t.Errorf("exactly %d characters: got %q, want them all", ReasonWidth, got)
	}
}
