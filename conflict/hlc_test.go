package conflict

import (
	"math"
	"reflect"
	"testing"

	"github.com/casualdb/casualdb"
)

func TestNextHLC(t *testing.T) {
	const w = 1_700_000_000_000_000
	tests := []struct {
		name   string
		prev   casualdb.HLC
		commit int64
		want   casualdb.HLC
	}{
		{"zero prev", casualdb.HLC{}, w, casualdb.HLC{Wall: w}},
		{"commit ahead resets logical", casualdb.HLC{Wall: w, Logical: 7}, w + 1, casualdb.HLC{Wall: w + 1}},
		{"commit equal ticks logical", casualdb.HLC{Wall: w, Logical: 7}, w, casualdb.HLC{Wall: w, Logical: 8}},
		{"commit behind ticks logical", casualdb.HLC{Wall: w, Logical: 0}, w - 3_600_000_000, casualdb.HLC{Wall: w, Logical: 1}},
		{"zero prev, commit zero", casualdb.HLC{}, 0, casualdb.HLC{Logical: 1}},
		{"zero prev, commit negative", casualdb.HLC{}, -5, casualdb.HLC{Logical: 1}},
		{"logical overflow carries into wall", casualdb.HLC{Wall: w, Logical: math.MaxUint32}, w, casualdb.HLC{Wall: w + 1}},
		{"logical overflow, commit behind", casualdb.HLC{Wall: w, Logical: math.MaxUint32}, 1, casualdb.HLC{Wall: w + 1}},
		{"logical max, commit ahead", casualdb.HLC{Wall: w, Logical: math.MaxUint32}, w + 10, casualdb.HLC{Wall: w + 10}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := NextHLC(tt.prev, tt.commit)
			if got != tt.want {
				t.Errorf("NextHLC(%v, %d) = %v, want %v", tt.prev, tt.commit, got, tt.want)
			}
			if got.Compare(tt.prev) <= 0 {
				t.Errorf("NextHLC(%v, %d) = %v, want > prev", tt.prev, tt.commit, got)
			}
		})
	}
}

func TestNext(t *testing.T) {
	const w = 1_700_000_000_000_000
	tests := []struct {
		name   string
		prev   *casualdb.Version
		site   casualdb.SiteID
		commit int64
		want   casualdb.Version
	}{
		{
			name: "no prev", site: "a", commit: w,
			want: casualdb.Version{HLC: casualdb.HLC{Wall: w}, Origin: "a", VC: casualdb.VectorClock{"a": 1}},
		},
		{
			name:   "prev from other site, clock behind",
			prev:   &casualdb.Version{HLC: casualdb.HLC{Wall: w, Logical: 2}, Origin: "b", VC: casualdb.VectorClock{"b": 3}},
			site:   "a",
			commit: w - 1000,
			want:   casualdb.Version{HLC: casualdb.HLC{Wall: w, Logical: 3}, Origin: "a", VC: casualdb.VectorClock{"a": 1, "b": 3}},
		},
		{
			name:   "prev from same site, clock ahead",
			prev:   &casualdb.Version{HLC: casualdb.HLC{Wall: w}, Origin: "a", VC: casualdb.VectorClock{"a": 4, "b": 1}},
			site:   "a",
			commit: w + 5,
			want:   casualdb.Version{HLC: casualdb.HLC{Wall: w + 5}, Origin: "a", VC: casualdb.VectorClock{"a": 5, "b": 1}},
		},
		{
			name:   "prev with nil clock",
			prev:   &casualdb.Version{HLC: casualdb.HLC{Wall: w}, Origin: "b"},
			site:   "a",
			commit: w,
			want:   casualdb.Version{HLC: casualdb.HLC{Wall: w, Logical: 1}, Origin: "a", VC: casualdb.VectorClock{"a": 1}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var before casualdb.Version
			if tt.prev != nil {
				before = *tt.prev
				before.VC = tt.prev.VC.Clone()
			}
			got := Next(tt.prev, tt.site, tt.commit)
			if !reflect.DeepEqual(got, tt.want) {
				t.Errorf("Next(%v, %s, %d) = %v %v, want %v %v", tt.prev, tt.site, tt.commit, got, got.VC, tt.want, tt.want.VC)
			}
			if tt.prev != nil && (tt.prev.HLC != before.HLC || CompareClocks(tt.prev.VC, before.VC) != Equal) {
				t.Errorf("Next modified prev: got %v %v, want %v %v", tt.prev, tt.prev.VC, before, before.VC)
			}
		})
	}
}
