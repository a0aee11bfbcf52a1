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
		// Exactly at the sample at 20 ms's position: what came after it
		// was flushed after 20 ms.
		{at: at(60), flushed: 400, sent: []uint64{200}},
		// Ahead of the flushed position it read (sampled a moment
		// later): 0.
		{at: at(80), flushed: 400, sent: []uint64{410}},
	}
	got := decodingDelays(ss)
	want := []time.Duration{0, 40 * time.Millisecond, 0, 40 * time.Millisecond, 0}
	if !slices.Equal(got, want) {
		t.Fatalf("decodingDelays = %v, want %v", got, want)
	}
	st := summariseWAL(got)
	if st.samples != 5 || st.p50 != 0 || st.p99 != 40*time.Millisecond || st.pmax != 40*time.Millisecond {
		t.Fatalf("summariseWAL = %+v", st)
	}
	if st := summariseWAL(nil); st.samples != 0 {
		t.Fatalf("summariseWAL(nil) = %+v", st)
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
