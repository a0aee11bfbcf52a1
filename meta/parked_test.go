package meta_test

import (
	"encoding/json"
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
