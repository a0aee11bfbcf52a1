package hint_test

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/hint"
	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/ship"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestHints_Expire keeps hints for two sites, then expires those stored
// before a cut-off: nothing goes unless the summary was recorded first,
// what goes is summed up by site, origin and epoch, and later hints stay.
func TestHints_Expire(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	js := pgtest.JetStream(t, pgtest.NewNATS(t).URL())
	hs, err := hint.Open(ctx, js, "b")
	if err != nil {
		t.Fatal(err)
	}
	add := func(forSite, origin casualdb.SiteID, epoch string, seq uint64) {
		t.Helper()
		h := hint.Hint{For: forSite, Origin: origin, Epoch: epoch, Seq: seq, LSN: 100 * seq, Commit: time.Unix(1, 0), Data: []byte("tx")}
		if _, err := hs.Add(ctx, h); err != nil {
			t.Fatal(err)
		}
	}
	held := func() map[casualdb.SiteID]uint64 {
		t.Helper()
		n, err := hs.Held(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	noRecord := func(context.Context, []hint.Expiry) error {
		t.Error("record called with nothing to expire")
		return nil
	}

	if got, err := hs.Expire(ctx, time.Now(), noRecord); err != nil || got != nil {
		t.Fatalf("Expire on an empty stream = %+v, %v; want nothing", got, err)
	}
	add("c", "a", "e1", 3)
	add("c", "a", "e1", 4)
	add("c", "a", "e1", 5)
	add("d", "a", "e1", 4)
	add("c", "a", "e2", 1) // the origin's outbox was recreated
	cutoff := time.Now()   // every hint above was stored before it
	add("c", "a", "e2", 2)
	// A hint handed off leaves a hole in the stream's sequence.
	st, err := js.Stream(ctx, hint.StreamName("b"))
	if err != nil {
		t.Fatal(err)
	}
	if err := st.DeleteMsg(ctx, 2); err != nil { // c's hint of seq 4
		t.Fatal(err)
	}

	t.Run("nothing old enough", func(t *testing.T) {
		if got, err := hs.Expire(ctx, cutoff.Add(-time.Hour), noRecord); err != nil || got != nil {
			t.Fatalf("Expire(an hour ago) = %+v, %v; want nothing", got, err)
		}
	})
	t.Run("record fails: nothing removed", func(t *testing.T) {
		boom := errors.New("database down")
		_, err := hs.Expire(ctx, cutoff, func(context.Context, []hint.Expiry) error { return boom })
		if !errors.Is(err, boom) {
			t.Fatalf("Expire = %v, want the record error", err)
		}
		if got := held(); got["c"] != 4 || got["d"] != 1 {
			t.Fatalf("held after a failed record: %v, want c:4 d:1", got)
		}
	})
	t.Run("expires what is older", func(t *testing.T) {
		var recorded []hint.Expiry
		got, err := hs.Expire(ctx, cutoff, func(_ context.Context, es []hint.Expiry) error {
			// Recorded while the hints are still there.
			if n := held(); n["c"] != 4 || n["d"] != 1 {
				t.Errorf("held while recording: %v, want every hint still there", n)
			}
			recorded = es
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		want := []hint.Expiry{
			{For: "c", Origin: "a", Epoch: "e1", Hints: 2, FirstSeq: 3, LastSeq: 5, LastLSN: 500},
			{For: "d", Origin: "a", Epoch: "e1", Hints: 1, FirstSeq: 4, LastSeq: 4, LastLSN: 400},
			{For: "c", Origin: "a", Epoch: "e2", Hints: 1, FirstSeq: 1, LastSeq: 1, LastLSN: 100},
		}
		if len(got) != len(want) {
			t.Fatalf("Expire = %+v, want %+v", got, want)
		}
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("expiry %d: got %+v, want %+v", i, got[i], want[i])
			}
		}
		if len(recorded) != len(got) {
			t.Errorf("recorded %+v, returned %+v: want the same", recorded, got)
		}
		if n := held(); n["c"] != 1 || n["d"] != 0 {
			t.Errorf("held after expiry: %v, want c:1 (the later hint) only", n)
		}
	})
	t.Run("again: nothing left to expire", func(t *testing.T) {
		if got, err := hs.Expire(ctx, cutoff, noRecord); err != nil || got != nil {
			t.Fatalf("second Expire = %+v, %v; want nothing", got, err)
		}
	})
	t.Run("the rest expires later", func(t *testing.T) {
		got, err := hs.Expire(ctx, time.Now(), func(context.Context, []hint.Expiry) error { return nil })
		if err != nil || len(got) != 1 || got[0].LastSeq != 2 || got[0].Epoch != "e2" {
			t.Fatalf("Expire(now) = %+v, %v; want the e2 hint of seq 2", got, err)
		}
		if n := held(); len(n) != 0 {
			t.Errorf("held after expiring all: %v, want none", n)
		}
	})
}

// TestHints_AddTellsDuplicates: the same transaction for the same site is
// kept once, and the second Add says so; for another site it is new.
func TestHints_AddTellsDuplicates(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	hs, err := hint.Open(ctx, pgtest.JetStream(t, pgtest.NewNATS(t).URL()), "b")
	if err != nil {
		t.Fatal(err)
	}
	h := hint.Hint{For: "c", Origin: "a", Epoch: "e", Seq: 1, LSN: 100, Commit: time.Unix(1, 0), Data: []byte("tx")}
	for i, want := range []bool{true, false} {
		if added, err := hs.Add(ctx, h); err != nil || added != want {
			t.Fatalf("Add #%d = %v, %v; want %v", i+1, added, err, want)
		}
	}
	h.For = "d"
	if added, err := hs.Add(ctx, h); err != nil || !added {
		t.Fatalf("Add for another site = %v, %v; want new", added, err)
	}
	held, err := hs.Held(ctx)
	if err != nil || held["c"] != 1 || held["d"] != 1 {
		t.Errorf("held %v, %v; want one for c and one for d", held, err)
	}
}

// TestHandoff_CarriesProof: a hint kept with its origin's proof and
// certificate is relayed with both (the receiving site refuses a relay
// without them when it verifies relays), as from its holder.
func TestHandoff_CarriesProof(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv := pgtest.NewNATS(t)
	js := pgtest.JetStream(t, srv.URL())
	hs, err := hint.Open(ctx, js, "b")
	if err != nil {
		t.Fatal(err)
	}
	target, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "IN_C", Subjects: []string{"casualdb.in.c.>"}})
	if err != nil {
		t.Fatal(err)
	}
	h := hint.Hint{For: "c", Origin: "a", Epoch: "e", Seq: 7, LSN: 700, Commit: time.Unix(1, 0), Data: []byte("tx"), Proof: []byte{0, 1, 0, 's'}, Cert: []byte("der")}
	if _, err := hs.Add(ctx, h); err != nil {
		t.Fatal(err)
	}
	h.Seq, h.LSN, h.Proof, h.Cert = 8, 800, nil, nil // an unsigned origin's
	if _, err := hs.Add(ctx, h); err != nil {
		t.Fatal(err)
	}
	ho, err := hint.NewHandoff(hint.HandoffConfig{Hints: hs, For: "c", IDPrefix: "p:", URL: func() (string, bool) { return srv.URL(), true }})
	if err != nil {
		t.Fatal(err)
	}
	defer pgtest.Run(t, ctx, "hand-off", ho.Run)()
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		if n := ho.HandedOff(); n != 2 {
			return fmt.Errorf("%d handed off", n)
		}
		return nil
	})
	for seq, want := range map[uint64][2]string{1: {base64.StdEncoding.EncodeToString([]byte{0, 1, 0, 's'}), base64.StdEncoding.EncodeToString([]byte("der"))}, 2: {"", ""}} {
		m, err := target.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		if m.Subject != ship.RelaySubject("c", "a", "b") || m.Header.Get(ship.HeaderProof) != want[0] || m.Header.Get(ship.HeaderCert) != want[1] {
			t.Errorf("relay %d: subject %s, proof %q, cert %q; want %v", seq, m.Subject, m.Header.Get(ship.HeaderProof), m.Header.Get(ship.HeaderCert), want)
		}
		// The relayer's own id, never the origin's (a relay the site
		// refuses must not make its inbox drop the origin's copy).
		if id := m.Header.Get(nats.MsgIdHdr); !strings.HasPrefix(id, "p:relay-a-") {
			t.Errorf("relay %d has message id %q", seq, id)
		}
	}
}
