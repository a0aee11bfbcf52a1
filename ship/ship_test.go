package ship_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/ship"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

func startServer(t *testing.T, dir string, port int) *ship.Server {
	t.Helper()
	s, err := ship.StartServer(ship.ServerConfig{Listen: fmt.Sprintf("127.0.0.1:%d", port), StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func jsFor(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

func tx(lsn uint64) *casualdb.Tx {
	return &casualdb.Tx{Origin: "a", LSN: lsn, CommitTime: time.Unix(1, 0), Relations: map[string]casualdb.Relation{}}
}

func TestOutbox(t *testing.T) {
	ctx := context.Background()
	srv := startServer(t, t.TempDir(), mustPort(t))
	defer srv.Close()
	ob, err := ship.OpenOutbox(ctx, jsFor(t, srv.ClientURL()), ship.OutboxConfig{Site: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if seq, lsn, err := ob.Last(ctx); err != nil || seq != 0 || lsn != 0 {
		t.Fatalf("empty Last() = %d, %d, %v; want 0, 0, nil", seq, lsn, err)
	}
	seq, err := ob.Append(ctx, []*casualdb.Tx{tx(10), tx(20), tx(30)})
	if err != nil || seq != 3 {
		t.Fatalf("Append = %d, %v; want 3", seq, err)
	}
	// A re-append of the same transaction (a restart) is de-duplicated.
	if seq, err := ob.Append(ctx, []*casualdb.Tx{tx(30)}); err != nil || seq != 3 {
		t.Errorf("re-Append = %d, %v; want 3 (duplicate)", seq, err)
	}
	if seq, lsn, err := ob.Last(ctx); err != nil || seq != 3 || lsn != 30 {
		t.Errorf("Last() = %d, %d, %v; want 3, 30", seq, lsn, err)
	}
	got, err := ob.Since(ctx, 1, 10)
	if err != nil || len(got) != 2 || got[0].Seq != 2 || got[0].LSN != 20 || got[1].LSN != 30 {
		t.Errorf("Since(1) = %+v, %v; want seqs 2,3", got, err)
	}
	if err := ob.Purge(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if got, err := ob.Since(ctx, 0, 10); err != nil || len(got) != 1 || got[0].Seq != 3 {
		t.Errorf("Since(0) after purge = %+v, %v; want seq 3 only", got, err)
	}
}

func mustPort(t *testing.T) int {
	p, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestShipper_PeerDownThenUp ships to a peer that is not there yet, then
// starts it: the peer gets everything, and the outbox can be trimmed.
func TestShipper_PeerDownThenUp(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := startServer(t, t.TempDir(), mustPort(t))
	t.Cleanup(a.Close)
	ob, err := ship.OpenOutbox(ctx, jsFor(t, a.ClientURL()), ship.OutboxConfig{Site: "a"})
	if err != nil {
		t.Fatal(err)
	}
	bPort := mustPort(t)
	sh, err := ship.NewShipper(ship.ShipperConfig{Site: "a", Peer: "b", PeerURL: fmt.Sprintf("nats://127.0.0.1:%d", bPort), Outbox: ob,
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sh.EnsureConsumer(ctx); err != nil {
		t.Fatal(err)
	}
	for i := 1; i <= 50; i++ {
		if _, err := ob.Append(ctx, []*casualdb.Tx{tx(uint64(i))}); err != nil {
			t.Fatal(err)
		}
	}
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- sh.Run(runCtx) }()
	defer func() {
		stop()
		if err := <-done; err != nil {
			t.Errorf("shipper: %v", err)
		}
	}()
	if sh.Shipped() != 0 {
		t.Fatalf("shipped %d to a peer that is down", sh.Shipped())
	}
	b := startServer(t, filepath.Join(t.TempDir(), "b"), bPort)
	t.Cleanup(b.Close)
	in, err := ship.OpenInbox(ctx, jsFor(t, b.ClientURL()), "b")
	if err != nil {
		t.Fatal(err)
	}
	pgtest.CheckFor(t, 30*time.Second, 50*time.Millisecond, func() error {
		n, err := in.Pending(ctx)
		if err != nil {
			return err
		}
		if n != 50 {
			return fmt.Errorf("inbox holds %d, want 50", n)
		}
		return nil
	})
	msgs, err := in.Consumer().Fetch(50, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	want := uint64(1)
	for m := range msgs.Messages() {
		if got := m.Headers().Get(ship.HeaderSeq); got != fmt.Sprint(want) {
			t.Errorf("message %d: seq header %s", want, got)
		}
		if m.Subject() != ship.InboxSubject("b", "a") || m.Headers().Get(ship.HeaderOrigin) != "a" || m.Headers().Get(ship.HeaderEpoch) != ob.Epoch() {
			t.Errorf("message %d: subject %s headers %v", want, m.Subject(), m.Headers())
		}
		want++
	}
	if want != 51 {
		t.Errorf("fetched %d messages, want 50", want-1)
	}
	pgtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if err := ob.Trim(ctx, []casualdb.SiteID{"b"}, 40); err != nil {
			return err
		}
		n, _, err := ob.Pending(ctx)
		if err != nil {
			return err
		}
		if n != 10 {
			return fmt.Errorf("outbox holds %d after trim, want 10 (capture recorded up to 40)", n)
		}
		return nil
	})
}
