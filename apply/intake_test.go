package apply

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
)

// fakeMsg is an inbox message as the intake sees it; acks and naks are
// recorded.
type fakeMsg struct {
	sseq       uint64
	data       []byte
	acks, naks int
	inProgress int
}

func (m *fakeMsg) Ack() error                       { m.acks++; return nil }
func (m *fakeMsg) NakWithDelay(time.Duration) error { m.naks++; return nil }
func (m *fakeMsg) InProgress() error                { m.inProgress++; return nil }

// msg is m as the transport hands it to apply.
func (m *fakeMsg) msg() *casualdb.InboxMsg {
	return &casualdb.InboxMsg{Acker: m, StreamSeq: m.sseq, Data: m.data}
}

// decodeSeqs decodes a fake message into one transaction per origin
// sequence listed for its stream sequence.
func decodeSeqs(seqs map[uint64][]uint64) func(*casualdb.InboxMsg, *delivery) ([]inMsg, error) {
	return func(m *casualdb.InboxMsg, d *delivery) ([]inMsg, error) {
		var out []inMsg
		for _, s := range seqs[m.StreamSeq] {
			out = append(out, inMsg{d: d, seq: s, origin: "a"})
		}
		return out, nil
	}
}

func heldSeqs(q *originQueue) []uint64 {
	var out []uint64
	for _, im := range q.held {
		out = append(out, im.seq)
	}
	return out
}

func newTestIntake(msgs ...*fakeMsg) (*intake, *originQueue) {
	in := newIntake(nil, 4)
	q := &originQueue{origin: "a", msgs: make(chan *casualdb.InboxMsg, len(msgs)+1), seen: map[uint64]*delivery{}}
	in.queues["a"], in.order = q, []*originQueue{q}
	for _, m := range msgs {
		q.msgs <- m.msg()
	}
	return in, q
}

func TestIntake_Take(t *testing.T) {
	t.Run("sequence order and redeliveries", func(t *testing.T) {
		m1, m2 := &fakeMsg{sseq: 1, data: []byte("x")}, &fakeMsg{sseq: 2, data: []byte("y")}
		redelivered := &fakeMsg{sseq: 1, data: []byte("x")}
		in, q := newTestIntake(m2, m1, redelivered)
		if err := in.take(decodeSeqs(map[uint64][]uint64{1: {3, 4}, 2: {1, 2}})); err != nil {
			t.Fatal(err)
		}
		if got, want := heldSeqs(q), []uint64{1, 2, 3, 4}; !slices.Equal(got, want) {
			t.Errorf("held %v, want %v (the redelivery of stream message 1 ignored)", got, want)
		}
		if len(q.seen) != 2 || q.bytes != 2 {
			t.Errorf("seen %d deliveries, %d bytes; want 2 and 2", len(q.seen), q.bytes)
		}
	})
	t.Run("bound", func(t *testing.T) {
		var msgs []*fakeMsg
		for i := uint64(1); i <= heldMsgs+2; i++ {
			msgs = append(msgs, &fakeMsg{sseq: i})
		}
		in, q := newTestIntake(msgs...)
		seqs := map[uint64][]uint64{}
		for i := uint64(1); i <= heldMsgs+2; i++ {
			seqs[i] = []uint64{i}
		}
		if err := in.take(decodeSeqs(seqs)); err != nil {
			t.Fatal(err)
		}
		if len(q.held) != heldMsgs || len(q.msgs) != 2 {
			t.Errorf("held %d, left %d in the channel; want %d and 2", len(q.held), len(q.msgs), heldMsgs)
		}
	})
}

func TestDelivery_Done(t *testing.T) {
	m := &fakeMsg{sseq: 7, data: []byte("abc")}
	in, q := newTestIntake(m)
	if err := in.take(decodeSeqs(map[uint64][]uint64{7: {1, 2}})); err != nil {
		t.Fatal(err)
	}
	d := q.held[0].d
	d.done()
	if m.acks != 0 {
		t.Fatalf("acknowledged with one of two transactions done")
	}
	d.done()
	if m.acks != 1 || len(q.seen) != 0 || q.bytes != 0 {
		t.Errorf("acks %d, seen %d, bytes %d; want 1, 0, 0", m.acks, len(q.seen), q.bytes)
	}
}

func TestOriginQueue_Release(t *testing.T) {
	var msgs []*fakeMsg
	seqs := map[uint64][]uint64{}
	for i := uint64(1); i <= heldMsgs; i++ {
		msgs = append(msgs, &fakeMsg{sseq: i})
		seqs[i] = []uint64{10 + i} // all after a missing sequence
	}
	in, q := newTestIntake(msgs...)
	if err := in.take(decodeSeqs(seqs)); err != nil {
		t.Fatal(err)
	}
	if !q.full() {
		t.Fatalf("not full with %d held", len(q.held))
	}
	n := q.release(time.Second)
	if n != heldMsgs/2 || len(q.held) != heldMsgs/2 || len(q.seen) != heldMsgs/2 {
		t.Errorf("released %d, holds %d (%d deliveries); want half each", n, len(q.held), len(q.seen))
	}
	if q.held[0].seq != 11 || q.held[len(q.held)-1].seq != 10+heldMsgs/2 {
		t.Errorf("holds %d..%d, want the oldest half", q.held[0].seq, q.held[len(q.held)-1].seq)
	}
	if msgs[0].naks != 0 || msgs[heldMsgs-1].naks != 1 {
		t.Errorf("naks: head %d, newest %d; want 0 and 1", msgs[0].naks, msgs[heldMsgs-1].naks)
	}
	// The head's own delivery is never handed back.
	one, q1 := newTestIntake(&fakeMsg{sseq: 1})
	_ = one.take(decodeSeqs(map[uint64][]uint64{1: {5, 6, 7}}))
	if n := q1.release(time.Second); n != 0 || len(q1.held) != 3 {
		t.Errorf("released %d of a single delivery, holds %d", n, len(q1.held))
	}
}

func TestIntake_KeepAlive(t *testing.T) {
	m := &fakeMsg{sseq: 1}
	in, q := newTestIntake(m)
	_ = in.take(decodeSeqs(map[uint64][]uint64{1: {1}}))
	in.keepAlive(time.Now())
	if m.inProgress != 0 {
		t.Errorf("a fresh delivery was marked in progress")
	}
	in.keepAlive(q.held[0].d.taken.Add(keepAliveAge + time.Second))
	if m.inProgress != 1 {
		t.Errorf("a delivery held for long was not marked in progress")
	}
}

// TestApplier_ApplyHeadWaits: what cannot be applied yet stays held at the
// head of its origin, in place (nothing handed back); duplicates of what
// is committed are acknowledged; a dependency wait is counted once.
func TestApplier_ApplyHeadWaits(t *testing.T) {
	newApplier := func() *Applier {
		a := &Applier{cfg: Config{Site: "c", MaxBatch: 8}, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
			progress: map[casualdb.SiteID]meta.Progress{"a": {Seq: 4, LSN: 400, Epoch: "e"}, "b": {Seq: 1, LSN: 100, Epoch: "e"}}}
		a.stats.Origins = map[casualdb.SiteID]OriginStats{}
		return a
	}
	hold := func(q *originQueue, m *fakeMsg, seqs ...uint64) {
		d := &delivery{m: m.msg(), sseq: m.sseq, left: len(seqs), origin: q}
		q.seen[m.sseq] = d
		for _, s := range seqs {
			q.held = append(q.held, inMsg{d: d, origin: "a", epoch: "e", seq: s, tx: &casualdb.Tx{Origin: "a", LSN: 100 * s}})
		}
	}
	t.Run("duplicates then a gap", func(t *testing.T) {
		a := newApplier()
		_, q := newTestIntake()
		dup, later := &fakeMsg{sseq: 1}, &fakeMsg{sseq: 2}
		hold(q, dup, 3, 4)
		hold(q, later, 6)
		// 3 was a heartbeat, 4 changed a row: a duplicate of 4 may be a
		// commit whose acknowledgement was lost, and informs (beatDue).
		q.held[0].tx.Changes = []casualdb.Change{{Table: meta.HeartbeatTable, Op: casualdb.OpUpdate}}
		q.held[1].tx.Changes = []casualdb.Change{{Table: "public.kv", Op: casualdb.OpDelete}}
		n, err := a.applyHead(context.Background(), q)
		if err != nil {
			t.Fatal(err)
		}
		if n != 2 || dup.acks != 1 || later.acks+later.naks != 0 {
			t.Errorf("consumed %d, duplicate acked %d, later acked %d naked %d; want 2, 1, 0, 0", n, dup.acks, later.acks, later.naks)
		}
		if got := heldSeqs(q); !slices.Equal(got, []uint64{6}) {
			t.Errorf("held %v, want [6] (waiting for 5)", got)
		}
		if a.stats.Skipped != 2 || a.stats.Informing != 1 {
			t.Errorf("Skipped = %d, Informing = %d; want 2, 1 (the heartbeat does not inform)", a.stats.Skipped, a.stats.Informing)
		}
	})
	t.Run("dependency", func(t *testing.T) {
		a := newApplier()
		_, q := newTestIntake()
		m := &fakeMsg{sseq: 1}
		hold(q, m, 5)
		q.held[0].tx.Deps = map[casualdb.SiteID]uint64{"b": 200}
		for range 3 {
			if n, err := a.applyHead(context.Background(), q); err != nil || n != 0 {
				t.Fatalf("consumed %d, %v; want 0 while b's 200 is missing", n, err)
			}
		}
		if len(q.held) != 1 || m.acks+m.naks != 0 {
			t.Errorf("held %d, acked %d, naked %d; want it held in place", len(q.held), m.acks, m.naks)
		}
		if a.stats.DependencyWaits != 1 {
			t.Errorf("DependencyWaits = %d, want 1 (one wait)", a.stats.DependencyWaits)
		}
		if a.progress["a"].Seq != 4 {
			t.Errorf("progress of a moved to %d without a commit", a.progress["a"].Seq)
		}
	})
}

// namesInbox is an inbox holding messages under names; Consume records
// which origins got a consumer.
type namesInbox struct {
	names    []casualdb.SiteID
	consumed []casualdb.SiteID
}

func (f *namesInbox) Origins(context.Context) ([]casualdb.SiteID, error) { return f.names, nil }
func (f *namesInbox) Consume(_ context.Context, o casualdb.SiteID, _ int, _ func(*casualdb.InboxMsg)) (func(), error) {
	f.consumed = append(f.consumed, o)
	return func() {}, nil
}

// TestIntake_DiscoverBoundsStrangers: origins that are neither peers nor
// applied before get a consumer up to maxStrangers of them; a peer relaying
// under invented names cannot make apply start one consumer per name. Known
// origins are read however many strangers there are.
func TestIntake_DiscoverBoundsStrangers(t *testing.T) {
	f := &namesInbox{names: []casualdb.SiteID{"b"}}
	for i := range maxStrangers + 36 {
		f.names = append(f.names, casualdb.SiteID(fmt.Sprintf("x%03d", i)))
	}
	f.names = append(f.names, "z") // known, after the strangers
	in := newIntake(f, 4)
	in.known = func(o casualdb.SiteID) bool { return o == "b" || o == "z" }
	if err := in.discover(t.Context(), []casualdb.SiteID{"c"}); err != nil {
		t.Fatal(err)
	}
	if len(f.consumed) != maxStrangers+3 || in.waiting != 36 {
		t.Fatalf("%d consumers (want %d: b, c, z and %d strangers), %d waiting (want 36)", len(f.consumed), maxStrangers+3, maxStrangers, in.waiting)
	}
	for _, o := range []casualdb.SiteID{"b", "c", "z"} {
		if !slices.Contains(f.consumed, o) {
			t.Errorf("no consumer for known origin %s", o)
		}
	}
	// Again: nothing new starts, the same wait.
	if err := in.discover(t.Context(), nil); err != nil || len(f.consumed) != maxStrangers+3 || in.waiting != 36 {
		t.Errorf("second discover: %v, %d consumers, %d waiting", err, len(f.consumed), in.waiting)
	}
}
