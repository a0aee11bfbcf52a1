package check

import (
	"strings"
	"testing"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/conflict"
)

func TestPlan(t *testing.T) {
	v1, v2 := version(1, "a"), version(2, "c")
	v1.VC, v2.VC = casualdb.VectorClock{"a": 1}, casualdb.VectorClock{"a": 1, "c": 1} // v2 saw v1
	tests := []struct {
		name  string
		sites map[string]Entry
		want  string // site/op/image, or "error: ..." prefix
	}{
		{"changed with replication bypassed: the origin's image", map[string]Entry{
			"a": {Present: true, Image: "orig", Version: v1},
			"b": {Present: true, Image: "bypassed", Version: v1},
			"c": {Present: true, Image: "orig", Version: v1},
		}, "a/rewrite/orig"},
		{"changed, origin not checked: the image most hold", map[string]Entry{
			"b": {Present: true, Image: "bypassed", Version: v1},
			"c": {Present: true, Image: "orig", Version: v1},
			"d": {Present: true, Image: "orig", Version: v1},
		}, "c/rewrite/orig"},
		{"resurrected: the site holding it deletes", map[string]Entry{
			"a": {},
			"b": {Present: true, Image: "ghost", Version: v2, Deleted: true},
			"c": {},
		}, "b/delete/ghost"},
		{"removed: a holder of the winning version rewrites", map[string]Entry{
			"a": {Present: true, Image: "row", Version: v1},
			"b": {Version: v1},
			"c": {Present: true, Image: "row", Version: v1},
		}, "a/rewrite/row"},
		{"a newer version wins over an older one", map[string]Entry{
			"a": {Present: true, Image: "old", Version: v1},
			"c": {Present: true, Image: "new", Version: v2},
		}, "c/rewrite/new"},
		{"no version anywhere: kept, never dropped", map[string]Entry{
			"a": {},
			"b": {Present: true, Image: "unversioned"},
		}, "b/rewrite/unversioned"},
		{"delete-wins: a write concurrent with a delete dies", map[string]Entry{
			"a": {Version: &casualdb.Version{HLC: casualdb.HLC{Wall: 1}, Origin: "a", VC: casualdb.VectorClock{"a": 2}}, Deleted: true, Floor: casualdb.VectorClock{"a": 2}},
			"c": {Present: true, Image: "late", Version: &casualdb.Version{HLC: casualdb.HLC{Wall: 3}, Origin: "c", VC: casualdb.VectorClock{"a": 1, "c": 1}}},
		}, "c/delete/late"},
		{"a live winner nobody holds", map[string]Entry{
			"a": {Version: v2},
			"b": {Present: true, Image: "old", Version: v1},
		}, "error: no site holds the row of the winning version"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a, err := Plan("public.t", Diff{Key: `["1"]`, Sites: tt.sites}, conflict.DeleteWins)
			got := string(a.Site) + "/" + a.Op + "/" + a.Image
			if err != nil {
				got = "error: " + err.Error()
			}
			if !strings.HasPrefix(got, tt.want) {
				t.Errorf("Plan = %s, want %s", got, tt.want)
			}
			if err == nil && (a.Table != "public.t" || a.Key != `["1"]`) {
				t.Errorf("action %+v names another row", a)
			}
			if err == nil {
				if e := tt.sites[string(a.Site)]; a.Version != e.Version {
					t.Errorf("action expects version %v, the site holds %v", a.Version, e.Version)
				}
			}
		})
	}
}
