package meta_test

import (
	"encoding/json"
	"errors"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
)

func TestParked_Decode(t *testing.T) {
	change := func(op string) string {
		return `{"relation":{"table":"public.t","schema":"public","name":"t","columns":[{"name":"id","type":"integer","key":true}]},"change":{"table":"public.t","op":"` + op + `","key":["1"],"values":[{"t":"1"}],"version":{"hlc":{"w":1},"origin":"a","vc":null}},"commit_time":"2024-05-01T12:00:00Z"}`
	}
	tests := []struct {
		name, table, payload string
		want                 meta.ParkedKind
	}{
		{"insert", "public.t", change("I"), meta.ParkedInsert},
		{"update", "public.t", change("U"), meta.ParkedUpdate},
		{"delete", "public.t", change("D"), meta.ParkedDelete},
		{"truncate", "public.t", change("T"), meta.ParkedTruncate},
		{"unknown op", "public.t", change("X"), meta.ParkedMessage},
		{"removed row", "public.t", `{"row":{"id":1},"version":{"hlc":{"w":1},"origin":"a","vc":null}}`, meta.ParkedRemovedRow},
		{"change without a table", "", change("I"), meta.ParkedMessage},
		{"row that is not an object", "public.t", `{"row":null}`, meta.ParkedMessage},
		{"a transaction", "public.t", `{"origin":"a","lsn":5,"changes":[]}`, meta.ParkedMessage},
		{"array", "public.t", `[1]`, meta.ParkedMessage},
		{"wrong types", "public.t", `{"relation":1,"change":2}`, meta.ParkedMessage},
		{"binary", "", "\xff\x00", meta.ParkedMessage},
		{"empty", "", "", meta.ParkedMessage},
	}
	for _, tt := range tests {
		got := meta.Parked{Table: tt.table, Payload: []byte(tt.payload)}.Decode()
		if got.Kind != tt.want {
			t.Errorf("%s: got %s, want %s", tt.name, got.Kind, tt.want)
		}
		if (got.Change != nil) != (tt.want != meta.ParkedMessage && tt.want != meta.ParkedRemovedRow) || (got.Removed != nil) != (tt.want == meta.ParkedRemovedRow) {
			t.Errorf("%s: got change %v, removed %v", tt.name, got.Change != nil, got.Removed != nil)
		}
	}
}

// TestParked_DecodeWritten decodes the payloads as apply writes them, with
// the same types.
func TestParked_DecodeWritten(t *testing.T) {
	rel := casualdb.Relation{Table: "public.t", Schema: "public", Name: "t", Columns: []casualdb.Column{{Name: "id", Type: "integer", Key: true}}}
	v := casualdb.Version{HLC: casualdb.HLC{Wall: 1}, Origin: "a"}
	commit := time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC)
	b, err := json.Marshal(&meta.ParkedChange{Relation: rel, Change: casualdb.Change{Table: "public.t", Op: casualdb.OpUpdate, Key: []string{"1"},
		Values: []casualdb.Value{{Text: "1"}}, Version: v}, CommitTime: commit})
	if err != nil {
		t.Fatal(err)
	}
	got := meta.Parked{Table: "public.t", Payload: b}.Decode()
	if got.Kind != meta.ParkedUpdate || got.Change == nil || got.Change.Relation.Table != "public.t" || got.Change.Change.Key[0] != "1" || !got.Change.CommitTime.Equal(commit) {
		t.Errorf("change: got %+v", got)
	}
	b, err = json.Marshal(&meta.RemovedRow{Row: json.RawMessage(`{"id": 1}`), Version: v})
	if err != nil {
		t.Fatal(err)
	}
	got = meta.Parked{Table: "public.t", Payload: b}.Decode()
	if got.Kind != meta.ParkedRemovedRow || got.Removed == nil || string(got.Removed.Row) != `{"id":1}` || got.Removed.Version.Origin != "a" {
		t.Errorf("removed row: got %+v", got)
	}
}

// TestParked_Operator parks entries and reads them as `casualdb parked`
// does: found by table, newest first, locked, deleted; and without the
// schema, ErrNotInstalled.
func TestParked_Operator(t *testing.T) {
	conn, ctx := installed(t)
	for _, p := range []meta.Parked{
		{Origin: "a", Seq: 1, LSN: 0x10, Table: "public.t", Key: `["1"]`, Reason: "r1", Payload: []byte(`{}`)},
		{Origin: "a", Seq: 2, Table: "public.u", Key: `["2"]`, Reason: "r2"},
		{Origin: "b", Seq: 3, Reason: "garbled"},
	} {
		if err := meta.Park(ctx, conn, p); err != nil {
			t.Fatal(err)
		}
	}
	all, err := meta.FindParked(ctx, conn, meta.ParkedFilter{})
	if err != nil || len(all) != 3 || all[0].Reason != "garbled" || all[2].Reason != "r1" || all[2].LSN != 0x10 || all[2].Origin != "a" || all[0].Payload != nil {
		t.Fatalf("all: got %+v, %v; want 3, newest first", all, err)
	}
	if got, err := meta.FindParked(ctx, conn, meta.ParkedFilter{Table: "public.u"}); err != nil || len(got) != 1 || got[0].Seq != 2 {
		t.Errorf("table public.u: got %+v, %v", got, err)
	}
	if got, err := meta.FindParked(ctx, conn, meta.ParkedFilter{Limit: 1}); err != nil || len(got) != 1 || got[0].ID != all[0].ID {
		t.Errorf("limit 1: got %+v, %v", got, err)
	}
	if p, ok, err := meta.LockParked(ctx, conn, all[1].ID); err != nil || !ok || p.Reason != "r2" {
		t.Errorf("lock %d: got %+v, %v, %v", all[1].ID, p, ok, err)
	}
	if deleted, err := meta.DeleteParked(ctx, conn, []int64{all[1].ID, 999999}); err != nil || len(deleted) != 1 || deleted[0] != all[1].ID {
		t.Errorf("delete: got %v, %v; want only %d", deleted, err, all[1].ID)
	}
	if _, ok, err := meta.LockParked(ctx, conn, all[1].ID); err != nil || ok {
		t.Errorf("lock a deleted entry: got %v, %v; want not found", ok, err)
	}

	if err := meta.Uninstall(ctx, conn); err != nil {
		t.Fatal(err)
	}
	if _, err := meta.FindParked(ctx, conn, meta.ParkedFilter{}); !errors.Is(err, meta.ErrNotInstalled) {
		t.Errorf("FindParked without the schema: got %v, want ErrNotInstalled", err)
	}
	if _, _, err := meta.LockParked(ctx, conn, 1); !errors.Is(err, meta.ErrNotInstalled) {
		t.Errorf("LockParked without the schema: got %v, want ErrNotInstalled", err)
	}
	if _, err := meta.DeleteParked(ctx, conn, []int64{1}); !errors.Is(err, meta.ErrNotInstalled) {
		t.Errorf("DeleteParked without the schema: got %v, want ErrNotInstalled", err)
	}
	if _, err := meta.FindConflicts(ctx, conn, meta.ConflictFilter{Since: time.Hour, Limit: 1}); !errors.Is(err, meta.ErrNotInstalled) {
		t.Errorf("FindConflicts without the schema: got %v, want ErrNotInstalled", err)
	}
}

// TestParked_PeersBytes: what is parked may quote a peer's bytes, NUL and
// bytes that are no UTF-8 among them; it is stored (PostgreSQL refuses such
// text, and apply would stop on every retry), the payload byte for byte.
func TestParked_PeersBytes(t *testing.T) {
	conn, ctx := installed(t)
	bad := "x\xff\x00y"
	p := meta.Parked{Origin: casualdb.SiteID(bad), Seq: 1, Table: bad, Key: bad, Reason: "tx of " + bad + " arrived as from a", Payload: []byte(bad)}
	if err := meta.Park(ctx, conn, p); err != nil {
		t.Fatalf("park a peer's bytes: %v", err)
	}
	got, err := meta.FindParked(ctx, conn, meta.ParkedFilter{})
	if err != nil || len(got) != 1 {
		t.Fatalf("parked: %+v, %v", got, err)
	}
	if want := "x\uFFFD\\x00y"; got[0].Table != want || string(got[0].Origin) != want || got[0].Reason != "tx of "+want+" arrived as from a" || string(got[0].Payload) != bad {
		t.Errorf("stored %q / %q / %q / %q", got[0].Origin, got[0].Table, got[0].Reason, got[0].Payload)
	}
}
