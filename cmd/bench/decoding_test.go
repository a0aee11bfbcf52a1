package main

import (
	"slices"
	"testing"
	"time"
)

func TestDecodingDelays(t *testing.T) {
	t0 := time.Date(2026, 12, 3, 4, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	ss := []walSample{
		// Before the first sample's position: unknown, left out.
		{at: at(0), flushed: 100, sent: []uint64{90}},
		// Decoded everything flushed: 0.
		{at: at(20), flushed: 200, sent: []uint64{200}},
		// Between the first two samples' positions: the WAL after 150
		// was flushed after the sample at 0 ms, so 40 ms at most.
		{at: at(40), flushed: 300, sent: []uint64{150, 300}},
		// Nothing flushed meanwhile: the same position as at 40 ms.
		{at: at(60), flushed: 300, sent: []uint64{300}},
		// At the position of the samples at 40 and 60 ms: what came
		// after it was flushed after the later of them, so 20 ms at most.
		{at: at(80), flushed: 400, sent: []uint64{300}},
		// Ahead of the flushed position it read (sampled a moment
		// later): 0.
		{at: at(100), flushed: 400, sent: []uint64{410}},
		// Still at 150: flushed after the sample at 0 ms.
		{at: at(120), flushed: 500, sent: []uint64{150}},
	}
	got, unknown := decodingDelays(ss)
	want := []time.Duration{0, 40 * time.Millisecond, 0, 0, 20 * time.Millisecond, 0, 120 * time.Millisecond}
	if !slices.Equal(got, want) || unknown != 1 {
		t.Fatalf("decodingDelays = %v, %d unknown; want %v, 1", got, unknown, want)
	}
	st := summariseWAL(got)
	if st.samples != 7 || st.p50 != 0 || st.p99 != 120*time.Millisecond || st.pmax != 120*time.Millisecond {
		t.Fatalf("summariseWAL = %+v", st)
	}
	if st := summariseWAL(nil); st.samples != 0 {
		t.Fatalf("summariseWAL(nil) = %+v", st)
	}
	// With 200 values the p99 is not the largest.
	var many []time.Duration
	for i := range 200 {
		many = append(many, time.Duration(i)*time.Millisecond)
	}
	if st := summariseWAL(many); st.p99 != 197*time.Millisecond || st.pmax != 199*time.Millisecond || st.p50 != 99*time.Millisecond {
		t.Fatalf("summariseWAL(0..199 ms) = %+v", st)
	}
}

func TestEventShares(t *testing.T) {
	ss := []walSample{
		{events: []string{"running", "Client:WalSenderWriteData"}},
		{events: []string{"running", "running"}},
	}
	for i := 0; i < 46; i++ {
		ss = append(ss, walSample{events: []string{"Client:WalSenderWaitForWAL"}})
	}
	ss = append(ss, walSample{events: []string{"IO:WALRead"}})
	got := eventShares(countEvents(ss))
	want := "Client:WalSenderWaitForWAL 90 %, running 5 %, other 3 % (51 samples)"
	if got != want {
		t.Fatalf("eventShares = %q, want %q", got, want)
	}
	if got := eventShares(nil); got != none {
		t.Fatalf("eventShares(nil) = %q", got)
	}
}
