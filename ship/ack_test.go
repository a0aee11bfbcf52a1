package ship

import "testing"

func TestAckTracker(t *testing.T) {
	var tr ackTracker
	steps := []struct {
		ack, raise uint64
		want       uint64
	}{
		{ack: 1, want: 1},
		{ack: 3, want: 1}, // out of order: waits for 2
		{ack: 4, want: 1},
		{ack: 2, want: 4}, // fills the gap: 3 and 4 follow
		{ack: 2, want: 4}, // a repeat changes nothing
		{ack: 7, want: 4},
		{raise: 5, want: 5}, // the consumer's floor covers 5
		{ack: 6, want: 7},   // and 7 was held above it
		{raise: 3, want: 7}, // a lower floor changes nothing
		{raise: 10, want: 10},
		{ack: 11, want: 11},
	}
	for i, s := range steps {
		if s.raise > 0 {
			tr.raise(s.raise)
		} else {
			tr.ack(s.ack)
		}
		if tr.floor != s.want {
			t.Fatalf("step %d (%+v): floor %d, want %d", i, s, tr.floor, s.want)
		}
	}
	if len(tr.above) != 0 {
		t.Fatalf("above %v, want empty", tr.above)
	}
}
