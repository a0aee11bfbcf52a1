package apply

import (
	"errors"
	"strings"
	"testing"

	"github.com/casualdb/casualdb"
)

// TestLocalTable_Check: a description fits the table when every column it
// names exists here and its key columns are the table's, in order; a fit
// allocates nothing (apply checks every transaction's description); a
// misfit names what differs.
func TestLocalTable_Check(t *testing.T) {
	lt, rel := bulkTable()
	if err := lt.check(rel); err != nil {
		t.Fatalf("the table's own description: %v", err)
	}
	if n := testing.AllocsPerRun(100, func() { _ = lt.check(rel) }); n != 0 {
		t.Errorf("a fit allocates %v times", n)
	}
	for cols, want := range map[string]struct {
		cols []casualdb.Column
		msg  string
	}{
		"another key":    {[]casualdb.Column{{Name: "id"}, {Name: "a", Key: true}}, "primary key (id) here, (a) at the origin"},
		"a longer key":   {[]casualdb.Column{{Name: "id", Key: true}, {Name: "a", Key: true}}, "primary key (id) here, (id, a) at the origin"},
		"no key":         {[]casualdb.Column{{Name: "id"}}, "primary key (id) here, () at the origin"},
		"unknown column": {[]casualdb.Column{{Name: "id", Key: true}, {Name: "zz"}}, "lacks column(s) zz"},
	} {
		bad := rel
		bad.Columns = want.cols
		if err := lt.check(bad); !errors.Is(err, casualdb.ErrSchemaMismatch) || !strings.Contains(err.Error(), want.msg) {
			t.Errorf("%s: %v, want %q", cols, err, want.msg)
		}
	}
}
