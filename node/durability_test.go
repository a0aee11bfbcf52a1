package node

import "testing"

func TestWDurable(t *testing.T) {
	for _, tc := range []struct {
		w      int
		last   uint64
		floors []uint64
		want   uint64
	}{
		{1, 9, nil, 9},                  // this site alone
		{2, 9, []uint64{3, 7}, 7},       // the best peer
		{3, 9, []uint64{3, 7}, 3},       // the second best
		{3, 9, []uint64{7}, 0},          // too few peers
		{2, 5, []uint64{8, 2}, 5},       // never past the outbox tail
		{2, 9, []uint64{0, 0, 4, 1}, 4}, // any peer counts
	} {
		if got := wDurable(tc.w, tc.last, tc.floors); got != tc.want {
			t.Errorf("wDurable(w=%d, last=%d, floors %v) = %d, want %d", tc.w, tc.last, tc.floors, got, tc.want)
		}
	}
}
