package casualdb

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"

	"pgregory.net/rapid"
)

func genSiteID() *rapid.Generator[SiteID] {
	return rapid.Custom(func(t *rapid.T) SiteID { return SiteID(rapid.StringMatching(`[a-e][0-9]?`).Draw(t, "site")) })
}

func genClock(name string) *rapid.Generator[VectorClock] {
	return rapid.Custom(func(t *rapid.T) VectorClock {
		return VectorClock(rapid.MapOf(genSiteID(), rapid.Uint64Range(1, 1<<40)).Draw(t, name))
	})
}

// genTx draws a transaction that passes Validate.
func genTx() *rapid.Generator[*Tx] {
	return rapid.Custom(func(t *rapid.T) *Tx {
		tx := &Tx{
			Origin:     genSiteID().Draw(t, "origin"),
			LSN:        rapid.Uint64Range(1, 1<<62).Draw(t, "lsn"),
			Xid:        rapid.Uint32().Draw(t, "xid"),
			CommitTime: time.UnixMicro(rapid.Int64Range(0, 4e15).Draw(t, "commit")).UTC(),
			Relations:  map[string]Relation{},
		}
		if deps := rapid.MapOf(genSiteID(), rapid.Uint64Range(1, 1<<62)).Draw(t, "deps"); len(deps) > 0 {
			tx.Deps = deps
		}
		nrel := rapid.IntRange(1, 3).Draw(t, "relations")
		var rels []Relation
		for i := 0; i < nrel; i++ {
			schema := rapid.SampledFrom([]string{"public", "app", "Odd Schema"}).Draw(t, "schema")
			name := rapid.StringMatching(`t[a-z]{0,5}`).Draw(t, "name")
			rel := Relation{Schema: schema, Name: name, Table: TableName(schema, name)}
			ncol := rapid.IntRange(1, 5).Draw(t, "columns")
			nkey := rapid.IntRange(1, ncol).Draw(t, "keys")
			for c := 0; c < ncol; c++ {
				rel.Columns = append(rel.Columns, Column{Name: "c" + string(rune('a'+c)), Type: rapid.SampledFrom([]string{"integer", "text", "numeric(14,2)", "timestamp with time zone"}).Draw(t, "type"), Key: c < nkey})
			}
			tx.Relations[rel.Table] = rel
			rels = append(rels, rel)
		}
		nch := rapid.IntRange(0, 6).Draw(t, "changes")
		for i := 0; i < nch; i++ {
			rel := rapid.SampledFrom(rels).Draw(t, "relation")
			rel = tx.Relations[rel.Table]
			op := rapid.SampledFrom([]Op{OpInsert, OpUpdate, OpDelete, OpTruncate}).Draw(t, "op")
			c := Change{Table: rel.Table, Op: op}
			c.Version = Version{HLC: HLC{Wall: rapid.Int64Range(1, 4e15).Draw(t, "wall"), Logical: rapid.Uint32().Draw(t, "logical")},
				Origin: genSiteID().Draw(t, "vorigin"), VC: genClock("vc").Draw(t, "vc")}
			if c.Version.VC == nil {
				c.Version.VC = VectorClock{}
			}
			nkey := len(rel.KeyColumns())
			switch op {
			case OpInsert, OpUpdate:
				for range rel.Columns {
					v := rapid.SampledFrom([]Value{{Text: ""}, {Text: "42"}, {Null: true}, {Unchanged: true}, {Text: "ünï\x00code, \"quoted\""}}).Draw(t, "value")
					c.Values = append(c.Values, v)
				}
				// Mostly the key is the key columns' values; sometimes
				// not (an explicit key must survive too).
				for k := 0; k < nkey; k++ {
					c.Key = append(c.Key, c.Values[k].Text)
				}
				if rapid.Bool().Draw(t, "odd key") {
					c.Key[0] = "other"
				}
				if rapid.Bool().Draw(t, "deltas") {
					c.Deltas = map[string]string{"ca": "-1.5", "cb": "0"}
				}
				if rapid.Bool().Draw(t, "columns") {
					c.Columns = map[string]Stamp{"ca": c.Version.Stamp(), "cb": {HLC: HLC{Wall: 7}, Origin: "z"}}
				}
				if rapid.Bool().Draw(t, "claims") {
					c.Claims = map[string]Claim{"cb": {Stamp: c.Version.Stamp(), Hash: rapid.Uint64().Draw(t, "hash")}, "cc": {Stamp: Stamp{HLC: HLC{Wall: -3, Logical: 2}, Origin: "y"}}}
				}
			case OpDelete:
				for k := 0; k < nkey; k++ {
					c.Key = append(c.Key, rapid.StringMatching(`[0-9]{1,4}`).Draw(t, "key"))
				}
			}
			if op != OpTruncate {
				if f := genClock("floor").Draw(t, "floor"); len(f) > 0 {
					c.Floor = f
				}
			}
			tx.Changes = append(tx.Changes, c)
		}
		return tx
	})
}

func TestTx_MarshalRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		tx := genTx().Draw(t, "tx")
		b, err := tx.Marshal()
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		got, err := UnmarshalTx(b)
		if err != nil {
			t.Fatalf("unmarshal: %v", err)
		}
		if !reflect.DeepEqual(got, tx) {
			t.Fatalf("round trip:\n got %+v\nwant %+v", got, tx)
		}
		// Equal transactions encode equally (maps in any order).
		again, _ := got.Marshal()
		if string(again) != string(b) {
			t.Fatalf("re-encoding differs")
		}
		// Every cut of the encoding is garbled, never a panic or a tx.
		for i := 0; i < len(b); i++ {
			if _, err := UnmarshalTx(b[:i]); !errors.Is(err, ErrGarbled) {
				t.Fatalf("prefix of %d/%d bytes: err %v, want garbled", i, len(b), err)
			}
		}
	})
}

func TestUnmarshalTx_JSON(t *testing.T) {
	// The encoding of earlier versions still decodes.
	tx := &Tx{Origin: "a", LSN: 10, Xid: 5, CommitTime: time.UnixMicro(1700000000123456).UTC(),
		Relations: map[string]Relation{"public.t": {Table: "public.t", Schema: "public", Name: "t", Columns: []Column{{Name: "id", Type: "integer", Key: true}, {Name: "v", Type: "text"}}}},
		Changes:   []Change{{Table: "public.t", Op: OpInsert, Key: []string{"1"}, Values: []Value{{Text: "1"}, {Null: true}}, Version: Version{HLC: HLC{Wall: 1700000000123456}, Origin: "a", VC: VectorClock{"a": 1}}}}}
	b, err := json.Marshal(tx)
	if err != nil {
		t.Fatal(err)
	}
	got, err := UnmarshalTx(b)
	if err != nil {
		t.Fatalf("unmarshal json: %v", err)
	}
	if !reflect.DeepEqual(got, tx) {
		t.Fatalf("got %+v, want %+v", got, tx)
	}
}

func TestUnmarshalTx_Garbled(t *testing.T) {
	good, err := (&Tx{Origin: "a", LSN: 1, CommitTime: time.UnixMicro(1).UTC()}).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	forged := append([]byte{wireMagic, wireVersion}, 1, 'a', 1, 0, 0, 0, 0)
	forged = append(forged, 0xff, 0xff, 0xff, 0xff, 0x0f) // four billion changes in no bytes
	tests := []struct {
		name string
		in   []byte
		want string
	}{
		{"empty", nil, "neither"},
		{"zero byte", []byte("\x00not a transaction{"), "neither"},
		{"json garbage", []byte(`{"origin":`), "unexpected end"},
		{"unknown version", append([]byte{wireMagic, 9}, good[2:]...), "version 9"},
		{"claims in version 1", claimsAsV1(t), "claims in an encoding of version 1"},
		{"trailing bytes", append(append([]byte{}, good...), 0), "after the transaction"},
		{"huge count", forged, "do not fit"},
		{"no origin", mustMarshal(t, &Tx{LSN: 1}), "without origin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := UnmarshalTx(tt.in)
			if !errors.Is(err, ErrGarbled) || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want garbled containing %q", err, tt.want)
			}
		})
	}
}

// claimsAsV1 is a transaction with claims whose version byte says 1.
func claimsAsV1(t *testing.T) []byte {
	b := mustMarshal(t, claimTx())
	if b[1] != wireVersion {
		t.Fatalf("a transaction with claims encodes as version %d, want %d", b[1], wireVersion)
	}
	b[1] = wireVersionV1
	return b
}

// claimTx is one insert carrying the claim of its unique column.
func claimTx() *Tx {
	v := Version{HLC: HLC{Wall: 1700000000123456}, Origin: "a", VC: VectorClock{"a": 1}}
	return &Tx{Origin: "a", LSN: 10, Xid: 5, CommitTime: time.UnixMicro(1700000000123456).UTC(),
		Relations: map[string]Relation{"public.t": {Table: "public.t", Schema: "public", Name: "t", Columns: []Column{{Name: "id", Type: "integer", Key: true}, {Name: "email", Type: "text"}}}},
		Changes: []Change{{Table: "public.t", Op: OpInsert, Key: []string{"1"}, Values: []Value{{Text: "1"}, {Text: "ann@example.com"}}, Version: v,
			Claims: map[string]Claim{"email": {Stamp: v.Stamp(), Hash: 0xfeedface12345678}}}}}
}

// TestTx_MarshalVersion: a transaction without claims is written as version
// 1, which sidecars that predate claims read; one with claims as version 2.
func TestTx_MarshalVersion(t *testing.T) {
	tx := claimTx()
	if b := mustMarshal(t, tx); b[1] != 2 {
		t.Errorf("with claims: version %d, want 2", b[1])
	}
	got, err := UnmarshalTx(mustMarshal(t, tx))
	if err != nil || !reflect.DeepEqual(got, tx) {
		t.Errorf("with claims: got %+v, %v; want %+v", got, err, tx)
	}
	tx.Changes[0].Claims = nil
	if b := mustMarshal(t, tx); b[1] != 1 {
		t.Errorf("without claims: version %d, want 1", b[1])
	}
}

func mustMarshal(t *testing.T, tx *Tx) []byte {
	t.Helper()
	b, err := tx.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTx_MarshalRefusesUndescribedTable(t *testing.T) {
	tx := &Tx{Origin: "a", LSN: 1, Changes: []Change{{Table: "public.t", Op: OpTruncate}}}
	if _, err := tx.Marshal(); err == nil || !strings.Contains(err.Error(), "not described") {
		t.Fatalf("got %v, want an error naming the undescribed table", err)
	}
}

// FuzzUnmarshalTx: whatever arrives from the network decodes to a valid Tx
// or to ErrGarbled, never a panic, and a decoded Tx encodes back to a form
// that decodes to the same Tx.
func FuzzUnmarshalTx(f *testing.F) {
	f.Add([]byte(`{"origin":"a","lsn":1,"changes":[]}`))
	f.Add([]byte("\x00"))
	tx := &Tx{Origin: "a", LSN: 10, Xid: 5, CommitTime: time.UnixMicro(1700000000123456).UTC(), Deps: map[SiteID]uint64{"b": 3},
		Relations: map[string]Relation{"public.t": {Table: "public.t", Schema: "public", Name: "t", Columns: []Column{{Name: "id", Type: "integer", Key: true}, {Name: "v", Type: "text"}}}},
		Changes: []Change{
			{Table: "public.t", Op: OpInsert, Key: []string{"1"}, Values: []Value{{Text: "1"}, {Null: true}}, Version: Version{HLC: HLC{Wall: 1700000000123456}, Origin: "a", VC: VectorClock{"a": 1}}, Deltas: map[string]string{"v": "1"}},
			{Table: "public.t", Op: OpDelete, Key: []string{"2"}, Version: Version{HLC: HLC{Wall: 1700000000123456, Logical: 1}, Origin: "a", VC: VectorClock{"a": 2}}, Floor: VectorClock{"a": 2}},
		}}
	b, err := tx.Marshal()
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Fuzz(func(t *testing.T, in []byte) {
		tx, err := UnmarshalTx(in)
		if err != nil {
			if !errors.Is(err, ErrGarbled) {
				t.Fatalf("error %v does not wrap ErrGarbled", err)
			}
			return
		}
		out, err := tx.Marshal()
		if err != nil {
			return // a JSON tx may name its relations in ways the binary form refuses
		}
		again, err := UnmarshalTx(out)
		if err != nil {
			t.Fatalf("re-decode: %v", err)
		}
		// The encoding is canonical: a tx and its re-decoded form encode
		// to the same bytes.
		if out2, err := again.Marshal(); err != nil || string(out2) != string(out) {
			t.Fatalf("re-encoded tx differs (%v):\n got %+v\nwant %+v", err, again, tx)
		}
	})
}

// benchTx is one single-row upsert, the benchmark's transaction.
func benchTx() *Tx {
	return &Tx{Origin: "a", LSN: 123456789, Xid: 5000, CommitTime: time.UnixMicro(1700000000123456).UTC(), Deps: map[SiteID]uint64{"b": 99999, "c": 88888},
		Relations: map[string]Relation{"public.bench_kv": {Table: "public.bench_kv", Schema: "public", Name: "bench_kv", Columns: []Column{
			{Name: "k", Type: "integer", Key: true}, {Name: "v", Type: "integer"}, {Name: "t", Type: "timestamp with time zone"}}}},
		Changes: []Change{{Table: "public.bench_kv", Op: OpUpdate, Key: []string{"4711"}, Values: []Value{{Text: "4711"}, {Text: "17"}, {Text: "2026-12-01 22:19:09.123456+00"}},
			Version: Version{HLC: HLC{Wall: 1700000000123456}, Origin: "a", VC: VectorClock{"a": 17, "b": 2}}}}}
}

func BenchmarkTx_Marshal(b *testing.B) {
	tx := benchTx()
	b.Run("binary", func(b *testing.B) {
		for b.Loop() {
			if _, err := tx.Marshal(); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		for b.Loop() {
			if _, err := json.Marshal(tx); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkUnmarshalTx(b *testing.B) {
	tx := benchTx()
	bin, _ := tx.Marshal()
	js, _ := json.Marshal(tx)
	b.Run("binary", func(b *testing.B) {
		b.SetBytes(int64(len(bin)))
		for b.Loop() {
			if _, err := UnmarshalTx(bin); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("json", func(b *testing.B) {
		b.SetBytes(int64(len(js)))
		for b.Loop() {
			if _, err := UnmarshalTx(js); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestTx_ValidateRelationNames: a relation's map key, Table, Schema and
// Name must agree: apply checks one and writes through another.
func TestTx_ValidateRelationNames(t *testing.T) {
	rel := Relation{Table: "public.users", Schema: "public", Name: "users", Columns: []Column{{Name: "id", Type: "integer", Key: true}}}
	for name, c := range map[string]struct {
		key string
		rel Relation
		ok  bool
	}{
		"agree":         {"public.users", rel, true},
		"other name":    {"public.users", Relation{Table: "public.users", Schema: "casualdb", Name: "row_version", Columns: rel.Columns}, false},
		"other key":     {"public.other", rel, false},
		"dotted schema": {"a.b.c", Relation{Table: "a.b.c", Schema: "a.b", Name: "c", Columns: rel.Columns}, true},
		"empty schema":  {".users", Relation{Table: ".users", Name: "users", Columns: rel.Columns}, false},
		"NUL in a name": {"public.u\x00", Relation{Table: "public.u\x00", Schema: "public", Name: "u\x00", Columns: rel.Columns}, false},
		"not UTF-8":     {"public.u\xff", Relation{Table: "public.u\xff", Schema: "public", Name: "u\xff", Columns: rel.Columns}, false},
	} {
		tx := &Tx{Origin: "a", LSN: 1, Relations: map[string]Relation{c.key: c.rel}}
		if err := tx.Validate(); (err == nil) != c.ok {
			t.Errorf("%s: Validate() = %v, want ok %v", name, err, c.ok)
		} else if err != nil && !errors.Is(err, ErrGarbled) {
			t.Errorf("%s: %v does not wrap ErrGarbled", name, err)
		}
	}
}

// TestDecoder_CachesOnlySmallRelations: a description larger than
// maxCachedRelationBytes decodes, every time, but is not kept (a peer
// sending large, ever-new descriptions could otherwise fill memory); a
// small one is kept.
func TestDecoder_CachesOnlySmallRelations(t *testing.T) {
	d := NewDecoder()
	for _, n := range []int{2, 2000} {
		rel := Relation{Table: "public.t", Schema: "public", Name: "t"}
		for i := range n {
			rel.Columns = append(rel.Columns, Column{Name: fmt.Sprintf("column_%04d", i), Type: "text", Key: i == 0})
		}
		tx := &Tx{Origin: "a", LSN: 1, Relations: map[string]Relation{"public.t": rel}}
		b, err := tx.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		for range 2 {
			got, err := d.Decode(b)
			if err != nil || len(got.Relations["public.t"].Columns) != n {
				t.Fatalf("%d columns: %v, %+v", n, err, got)
			}
		}
	}
	if len(d.rels) != 1 {
		t.Errorf("the cache holds %d descriptions, want the small one only", len(d.rels))
	}
}
