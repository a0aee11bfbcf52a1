package hint

import (
	"slices"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
)

func received(origin casualdb.SiteID, epoch string, seq uint64, size int) apply.Received {
	return apply.Received{Origin: origin, Epoch: epoch, Seq: seq, Data: make([]byte, size),
		Tx: &casualdb.Tx{Origin: origin, LSN: 1000 + seq}}
}

func seqsOf(ts []recentTx) []uint64 {
	var out []uint64
	for _, t := range ts {
		out = append(out, t.rec.Seq)
	}
	return out
}

func TestRecentTxs_MissedBy(t *testing.T) {
	var rt recentTxs
	now := time.Now()
	for seq := uint64(1); seq <= 4; seq++ {
		rt.add(now, received("a", "e1", seq, 10))
	}
	rt.add(now, received("b", "e1", 1, 10))
	rt.add(now, received("c", "e1", 7, 10))

	t.Run("behind", func(t *testing.T) {
		got := rt.missedBy("c", map[casualdb.SiteID]Applied{"a": {Seq: 2, Epoch: "e1"}, "b": {Seq: 1, Epoch: "e1"}})
		if want := []uint64{3, 4}; !slices.Equal(seqsOf(got), want) {
			t.Errorf("missed %v, want %v (c's own and what it applied left out)", seqsOf(got), want)
		}
		if got[0].rec.Origin != "a" || got[0].id != "a-0/3EB" || len(got[0].rec.Data) != 10 {
			t.Errorf("first missed = %+v", got[0])
		}
	})
	t.Run("other epoch or no digest", func(t *testing.T) {
		got := rt.missedBy("c", map[casualdb.SiteID]Applied{"a": {Seq: 9, Epoch: "e0"}})
		if want := []uint64{1, 2, 3, 4, 1}; !slices.Equal(seqsOf(got), want) {
			t.Errorf("missed %v, want %v", seqsOf(got), want)
		}
		if got := rt.missedBy("c", nil); len(got) != 5 {
			t.Errorf("without a digest %d missed, want 5", len(got))
		}
	})
	t.Run("up to date", func(t *testing.T) {
		got := rt.missedBy("c", map[casualdb.SiteID]Applied{"a": {Seq: 4, Epoch: "e1"}, "b": {Seq: 1, Epoch: "e1"}})
		if len(got) != 0 {
			t.Errorf("missed %v, want none", seqsOf(got))
		}
	})
}

func TestRecentTxs_Bounds(t *testing.T) {
	t.Run("window", func(t *testing.T) {
		var rt recentTxs
		start := time.Now()
		rt.add(start, received("a", "e", 1, 10))
		rt.add(start.Add(recentWindow/2), received("a", "e", 2, 10))
		rt.add(start.Add(recentWindow+time.Second), received("a", "e", 3, 10))
		if got := seqsOf(rt.missedBy("c", nil)); !slices.Equal(got, []uint64{2, 3}) {
			t.Errorf("kept %v, want [2 3]: the first is older than the window", got)
		}
		if rt.bytes != 20 {
			t.Errorf("bytes = %d, want 20", rt.bytes)
		}
	})
	t.Run("bytes", func(t *testing.T) {
		var rt recentTxs
		now := time.Now()
		for seq := uint64(1); seq <= 5; seq++ {
			rt.add(now, received("a", "e", seq, recentMaxBytes/4))
		}
		if got := seqsOf(rt.missedBy("c", nil)); !slices.Equal(got, []uint64{2, 3, 4, 5}) {
			t.Errorf("kept %v, want the newest four", got)
		}
	})
	t.Run("compacted", func(t *testing.T) {
		var rt recentTxs
		start := time.Now()
		for seq := uint64(1); seq <= 10_000; seq++ {
			// One a millisecond... then a jump past the window.
			rt.add(start.Add(time.Duration(seq)*time.Millisecond), received("a", "e", seq, 1))
		}
		rt.add(start.Add(recentWindow+time.Hour), received("a", "e", 10_001, 1))
		if got := seqsOf(rt.missedBy("c", nil)); !slices.Equal(got, []uint64{10_001}) {
			t.Errorf("kept %d transactions, want only the last", len(got))
		}
		if len(rt.list)-rt.head != 1 || len(rt.list) > 2 || rt.bytes != 1 {
			t.Errorf("list %d long from %d, %d bytes; want the forgotten prefix compacted away", len(rt.list), rt.head, rt.bytes)
		}
	})
	t.Run("data copied", func(t *testing.T) {
		var rt recentTxs
		r := received("a", "e", 1, 3)
		rt.add(time.Now(), r)
		r.Data[0] = 'x'
		if got := rt.missedBy("c", nil)[0].rec.Data[0]; got != 0 {
			t.Errorf("the remembered data changed with the message: %q", got)
		}
	})
}

// TestRecentTxs_KeepsProofs: what is remembered for late and relay hints
// keeps the origin's proof and certificate (the relay is refused without
// them), and the proof counts against the byte bound.
func TestRecentTxs_KeepsProofs(t *testing.T) {
	var rt recentTxs
	r := received("a", "e1", 1, 10)
	r.Proof, r.Cert = []byte{0, 1, 0, 's', 'i', 'g'}, []byte("der")
	rt.add(time.Now(), r)
	got := rt.missedBy("c", nil)
	if len(got) != 1 || string(got[0].rec.Proof) != string(r.Proof) || string(got[0].rec.Cert) != "der" {
		t.Fatalf("remembered %+v", got)
	}
	if rt.bytes != 10+len(r.Proof) {
		t.Errorf("%d bytes counted, want data and proof, %d", rt.bytes, 10+len(r.Proof))
	}
}
