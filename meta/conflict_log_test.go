package meta

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
)

func TestConflictLog_DecodeVersion(t *testing.T) {
	v, err := decodeVersion([]byte(`{"hlc":{"w":5,"l":2},"origin":"eu1","vc":{"eu1":1}}`))
	if err != nil || v == nil || v.HLC != (casualdb.HLC{Wall: 5, Logical: 2}) || v.Origin != "eu1" || v.VC["eu1"] != 1 {
		t.Errorf("got %+v, %v", v, err)
	}
	// LogConflict stores the zero version when apply had none on record.
	zero, _ := json.Marshal(casualdb.Version{})
	for _, b := range [][]byte{nil, zero} {
		if v, err := decodeVersion(b); v != nil || err != nil {
			t.Errorf("decodeVersion(%s): got %+v, %v; want nil, nil", b, v, err)
		}
	}
	if _, err := decodeVersion([]byte(`[1]`)); err == nil {
		t.Error("decodeVersion([1]): got no error")
	}
}

func TestConflictFilter_SQL(t *testing.T) {
	sql, args := ConflictFilter{Since: time.Hour, Limit: 5}.sql()
	if !strings.Contains(sql, "LIMIT $2") || strings.Contains(sql, "tbl =") || fmt.Sprint(args) != "[3600 5]" {
		t.Errorf("without table: got %s %v", sql, args)
	}
	sql, args = ConflictFilter{Since: time.Hour, Table: "public.t", Limit: 5}.sql()
	if !strings.Contains(sql, "tbl = $2") || !strings.Contains(sql, "LIMIT $3") || fmt.Sprint(args) != "[3600 public.t 5]" {
		t.Errorf("with table: got %s %v", sql, args)
	}
	if !strings.Contains(sql, "ORDER BY logged_at DESC, id DESC") {
		t.Errorf("not newest first: %s", sql)
	}
}
