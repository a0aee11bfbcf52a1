package node

import (
	"testing"
	"time"
)

func TestRetention_Floor(t *testing.T) {
	t0 := time.Unix(1000, 0)
	var r retention
	steps := []struct {
		after time.Duration
		seq   uint64
		want  uint64
	}{
		{0, 5, 0}, // just started: nothing is old enough
		{30 * time.Second, 9, 0},
		{60 * time.Second, 12, 5}, // seq 5 was there a minute ago
		{61 * time.Second, 12, 5},
		{95 * time.Second, 20, 9},
		{300 * time.Second, 30, 20},
	}
	for _, s := range steps {
		if got := r.floor(t0.Add(s.after), time.Minute, s.seq); got != s.want {
			t.Errorf("at +%s with seq %d: floor %d, want %d", s.after, s.seq, got, s.want)
		}
	}
	if len(r.samples) > 3 {
		t.Errorf("%d samples kept, want the few within a minute", len(r.samples))
	}
	if got := (&retention{}).floor(t0, 0, 7); got != 7 {
		t.Errorf("no retention: floor %d, want 7", got)
	}
}
