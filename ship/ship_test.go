package ship_test

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/certs"
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

// siteCerts makes a CA and certificates for sites a and b (`casualdb
// certs`) in a directory of the test's.
func siteCerts(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	if err := certs.Generate(dir, []string{"a", "b"}, nil); err != nil {
		t.Fatal(err)
	}
	return dir
}

// startSite starts site's server as a sidecar does: TLS only, clients
// verified against the CA in certDir, each peer with its permissions. It
// returns the server and the site's own JetStream (in process).
func startSite(t *testing.T, dir string, port int, site, certDir string) (*ship.Server, jetstream.JetStream) {
	t.Helper()
	srvTLS, err := certs.ServerConfig(certs.For(certDir, site))
	if err != nil {
		t.Fatal(err)
	}
	s, err := ship.StartServer(ship.ServerConfig{Listen: fmt.Sprintf("127.0.0.1:%d", port), StoreDir: dir, TLS: srvTLS,
		Site: casualdb.SiteID(site), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	// nats://: a tls:// URL would make the client speak TLS in process too.
	return s, pgtest.JetStream(t, fmt.Sprintf("nats://127.0.0.1:%d", port), s.InProcess())
}

// peerTLS is site's client TLS for its links to peers.
func peerTLS(t *testing.T, certDir, site string) *tls.Config {
	t.Helper()
	c, err := certs.ClientConfig(certs.For(certDir, site))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func tx(lsn uint64) *casualdb.Tx {
	return &casualdb.Tx{Origin: "a", LSN: lsn, CommitTime: time.Unix(1, 0), Relations: map[string]casualdb.Relation{}}
}

func TestOutbox(t *testing.T) {
	ctx := context.Background()
	srv := startServer(t, t.TempDir(), mustPort(t))
	defer srv.Close()
	ob, err := ship.OpenOutbox(ctx, pgtest.JetStream(t, srv.ClientURL()), ship.OutboxConfig{Site: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if seq, lsn, msg, err := ob.Last(ctx); err != nil || seq != 0 || lsn != 0 || msg != 0 {
		t.Fatalf("empty Last() = %d, %d, %d, %v; want zeros", seq, lsn, msg, err)
	}
	// A transaction a message, as earlier versions stored them: the
	// transaction's sequence is the message's.
	seq, err := ob.Append(ctx, []*casualdb.Tx{tx(10), tx(20), tx(30)})
	if err != nil || seq != 3 {
		t.Fatalf("Append = %d, %v; want 3", seq, err)
	}
	// A re-append of the same transaction is de-duplicated.
	if seq, err := ob.Append(ctx, []*casualdb.Tx{tx(30)}); err != nil || seq != 3 {
		t.Errorf("re-Append = %d, %v; want 3 (duplicate)", seq, err)
	}
	if seq, lsn, msg, err := ob.Last(ctx); err != nil || seq != 3 || lsn != 30 || msg != 3 {
		t.Errorf("Last() = %d, %d, %d, %v; want 3, 30, 3", seq, lsn, msg, err)
	}
	got, _, err := ob.Since(ctx, 1, 10)
	if err != nil || len(got) != 2 || got[0].Seq != 2 || got[0].LSN != 20 || got[1].LSN != 30 {
		t.Errorf("Since(1) = %+v, %v; want seqs 2,3", got, err)
	}

	// Capture's way: a batch is one message.
	publish := func(after uint64, first uint64, lsns ...uint64) (uint64, error) {
		t.Helper()
		var txs []*casualdb.Tx
		for i, l := range lsns {
			x := tx(l)
			x.Seq = first + uint64(i)
			txs = append(txs, x)
		}
		n, wait, err := ob.Publish(ctx, txs, after)
		if err != nil {
			return 0, err
		}
		return n, wait(ctx)
	}
	if n, err := publish(3, 4, 40, 50, 60); err != nil || n != 1 {
		t.Fatalf("Publish of 3 txs = %d messages, %v; want 1", n, err)
	}
	if n, err := publish(4, 7, 70); err != nil || n != 1 {
		t.Fatalf("Publish of 1 tx = %d messages, %v; want 1", n, err)
	}
	if seq, lsn, msg, err := ob.Last(ctx); err != nil || seq != 7 || lsn != 70 || msg != 5 {
		t.Errorf("Last() = %d, %d, %d, %v; want 7, 70, 5", seq, lsn, msg, err)
	}
	got, msg, err := ob.Since(ctx, 4, 10)
	if err != nil || len(got) != 3 || got[0].Seq != 5 || got[0].LSN != 50 || got[2].Seq != 7 || msg != 5 {
		t.Errorf("Since(4) = %+v, message %d, %v; want seqs 5..7 through message 5", got, msg, err)
	}
	for _, c := range []struct {
		tx, msg uint64
		ok      bool
	}{{2, 2, true}, {4, 4, true}, {6, 4, true}, {7, 5, true}, {8, 0, false}} {
		if msg, ok, err := ob.MsgSeqOf(ctx, c.tx); err != nil || msg != c.msg || ok != c.ok {
			t.Errorf("MsgSeqOf(%d) = %d, %t, %v; want %d, %t", c.tx, msg, ok, err, c.msg, c.ok)
		}
	}
	if lsn, ok, err := ob.LSN(ctx, 5); err != nil || !ok || lsn != 50 {
		t.Errorf("LSN(5) = %d, %t, %v; want 50", lsn, ok, err)
	}
	// A message that does not follow the last one is refused, and nothing
	// is stored twice.
	if _, err := publish(3, 8, 80); err == nil {
		t.Error("Publish after message 3 (the outbox holds 5) succeeded")
	}
	if err := ob.Purge(ctx, 4); err != nil {
		t.Fatal(err)
	}
	if got, _, err := ob.Since(ctx, 0, 10); err != nil || len(got) != 4 || got[0].Seq != 4 {
		t.Errorf("Since(0) after purge = %+v, %v; want seqs 4..7", got, err)
	}
	if msg, ok, err := ob.MsgSeqOf(ctx, 1); err != nil || msg != 4 || ok {
		t.Errorf("MsgSeqOf(1) after purge = %d, %t, %v; want the oldest message held, 4", msg, ok, err)
	}
}

// runShipper runs sh until the returned stop is called, which waits for it
// and reports its error.
func runShipper(t *testing.T, ctx context.Context, sh *ship.Shipper) (stop func()) {
	return pgtest.Run(t, ctx, "shipper", sh.Run)
}

func mustPort(t *testing.T) int {
	p, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestShipper_PeerDownThenUp ships to a peer that is not there yet, then
// starts it: the peer gets everything, and the outbox can be trimmed; with
// the outbox as capture writes it (batches of transactions a message) and as
// earlier versions wrote it (a transaction a message).
func TestShipper_PeerDownThenUp(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	t.Run("bundles", func(t *testing.T) { testShipperPeerDownThenUp(t, 7) })
	t.Run("a transaction a message", func(t *testing.T) { testShipperPeerDownThenUp(t, 0) })
}

// testShipperPeerDownThenUp fills the outbox with 50 transactions, bundle
// of them a message (0: Append, one each).
func testShipperPeerDownThenUp(t *testing.T, bundle int) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	certDir := siteCerts(t)
	_, aJS := startSite(t, t.TempDir(), mustPort(t), "a", certDir)
	ob, err := ship.OpenOutbox(ctx, aJS, ship.OutboxConfig{Site: "a"})
	if err != nil {
		t.Fatal(err)
	}
	bPort := mustPort(t)
	// Its address is not known yet either (as for a peer the outbox
	// remembers before gossip tells where it is).
	sh, err := ship.NewShipper(ship.ShipperConfig{Site: "a", Peer: "b", Outbox: ob, TLS: peerTLS(t, certDir, "a"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sh.EnsureConsumer(ctx); err != nil {
		t.Fatal(err)
	}
	var msgOf40 uint64 // the message holding transaction 40
	if bundle == 0 {
		for i := 1; i <= 50; i++ {
			if _, err := ob.Append(ctx, []*casualdb.Tx{tx(uint64(i))}); err != nil {
				t.Fatal(err)
			}
		}
		msgOf40 = 40
	} else {
		var msgs uint64
		for first := 1; first <= 50; first += bundle {
			var txs []*casualdb.Tx
			for i := first; i < first+bundle && i <= 50; i++ {
				x := tx(uint64(i))
				x.Seq = uint64(i)
				txs = append(txs, x)
			}
			msgs += publishOutbox(t, ctx, ob, txs, msgs)
			if first <= 40 && 40 < first+bundle {
				msgOf40 = msgs
			}
		}
	}
	defer runShipper(t, ctx, sh)()
	if sh.Shipped() != 0 || sh.Connected() {
		t.Fatalf("shipped %d to a peer whose address is unknown (connected %v)", sh.Shipped(), sh.Connected())
	}
	sh.SetPeerURL(fmt.Sprintf("tls://127.0.0.1:%d", bPort))
	_, bJS := startSite(t, filepath.Join(t.TempDir(), "b"), bPort, "b", certDir)
	in, err := ship.OpenInbox(ctx, bJS, "b")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := in.Reset(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	// The shipper bundles what it has in hand: 50 transactions arrive in
	// one or more messages, every one of them once and in order.
	want := uint64(1)
	deadline := time.Now().Add(30 * time.Second)
	for want <= 50 && time.Now().Before(deadline) {
		msgs, err := cons.Fetch(50, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			t.Fatal(err)
		}
		for m := range msgs.Messages() {
			if m.Subject() != ship.InboxSubject("b", "a") || m.Headers().Get(ship.HeaderOrigin) != "a" || m.Headers().Get(ship.HeaderEpoch) != ob.Epoch() {
				t.Errorf("message from seq %d: subject %s headers %v", want, m.Subject(), m.Headers())
			}
			// An id no other peer can compute (Outbox.IDPrefix).
			if id := m.Headers().Get(nats.MsgIdHdr); !strings.HasPrefix(id, ob.IDPrefix("b")) {
				t.Errorf("message from seq %d: id %q lacks the outbox's prefix for b %q", want, id, ob.IDPrefix("b"))
			}
			entries, err := ship.Entries(m.Headers(), m.Data())
			if err != nil {
				t.Fatalf("message from seq %d: %v", want, err)
			}
			for _, e := range entries {
				if e.Seq != want {
					t.Fatalf("entry seq %d, want %d", e.Seq, want)
				}
				got, err := casualdb.UnmarshalTx(e.Data)
				if err != nil || got.LSN != want {
					t.Fatalf("entry %d: %v, %+v", want, err, got)
				}
				want++
			}
			_ = m.Ack()
		}
	}
	if want != 51 {
		t.Errorf("received %d transactions, want 50", want-1)
	}
	// The shipper learns of the acknowledgement after the receiver holds
	// the messages.
	pgtest.CheckFor(t, 10*time.Second, 10*time.Millisecond, func() error {
		if got := sh.Acked(); got != 50 {
			return fmt.Errorf("Acked() = %d, want 50", got)
		}
		return nil
	})
	pgtest.CheckFor(t, 10*time.Second, 50*time.Millisecond, func() error {
		if err := ob.Trim(ctx, []casualdb.SiteID{"b"}, msgOf40); err != nil {
			return err
		}
		// What capture has not recorded stays: the message holding 40
		// and those before it go.
		got, _, err := ob.Since(ctx, 0, 100)
		if err != nil {
			return err
		}
		wantFirst := uint64(41)
		if bundle > 0 {
			wantFirst = uint64((40-1)/bundle+1)*uint64(bundle) + 1
		}
		if len(got) == 0 || got[0].Seq != wantFirst || got[len(got)-1].Seq != 50 {
			return fmt.Errorf("outbox holds %d txs from %v after trim, want %d..50", len(got), got, wantFirst)
		}
		return nil
	})
}

func TestEntries(t *testing.T) {
	var body []byte
	for i := uint64(1); i <= 3; i++ {
		body = ship.AppendEntry(body, ship.Entry{Seq: 10 + i, Data: []byte(fmt.Sprintf("tx-%d", i))})
	}
	h := nats.Header{}
	h.Set(ship.HeaderBundle, "3")
	got, err := ship.Entries(h, body)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[0].Seq != 11 || string(got[2].Data) != "tx-3" {
		t.Fatalf("entries %+v", got)
	}
	single := nats.Header{}
	single.Set(ship.HeaderSeq, "7")
	if got, err := ship.Entries(single, []byte("x")); err != nil || len(got) != 1 || got[0].Seq != 7 {
		t.Fatalf("single message: %+v, %v", got, err)
	}
	for name, c := range map[string]struct {
		h    nats.Header
		body []byte
	}{
		"truncated body":      {h, body[:len(body)-2]},
		"count disagrees":     {nats.Header{ship.HeaderBundle: {"4"}}, body},
		"bad count":           {nats.Header{ship.HeaderBundle: {"many"}}, body},
		"no sequence header":  {nats.Header{}, []byte("x")},
		"length past the end": {h, []byte{1, 200, 1, 'x'}},
	} {
		if _, err := ship.Entries(c.h, c.body); !errors.Is(err, casualdb.ErrGarbled) {
			t.Errorf("%s: err = %v, want ErrGarbled", name, err)
		}
	}
}

// TestShipper_EnsureConsumerHandsBackInFlight takes outbox messages for a
// peer and neither acknowledges nor hands them back (a shipper killed with
// them in flight): the next EnsureConsumer makes them come again at once,
// not after the acknowledgement timeout, and keeps what was acknowledged.
func TestShipper_EnsureConsumerHandsBackInFlight(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	a := startServer(t, t.TempDir(), mustPort(t))
	t.Cleanup(a.Close)
	ob, err := ship.OpenOutbox(ctx, pgtest.JetStream(t, a.ClientURL()), ship.OutboxConfig{Site: "a"})
	if err != nil {
		t.Fatal(err)
	}
	sh, err := ship.NewShipper(ship.ShipperConfig{Site: "a", Peer: "b", PeerURL: "nats://127.0.0.1:1", Outbox: ob,
		AckWait: time.Hour, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := sh.EnsureConsumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ob.Append(ctx, []*casualdb.Tx{tx(1), tx(2), tx(3), tx(4)}); err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(4, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for m := range batch.Messages() {
		if n++; n == 1 {
			if err := m.DoubleAck(ctx); err != nil { // seq 1 reached the peer
				t.Fatal(err)
			}
		}
	}
	if n != 4 {
		t.Fatalf("fetched %d messages, want 4", n)
	}
	// Seqs 2-4 are in flight for an hour. A new run's consumer has them now.
	cons, err = sh.EnsureConsumer(ctx)
	if err != nil {
		t.Fatal(err)
	}
	batch, err = cons.Fetch(4, jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for m := range batch.Messages() {
		md, _ := m.Metadata()
		seqs = append(seqs, md.Sequence.Stream)
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if fmt.Sprint(seqs) != "[2 3 4]" {
		t.Errorf("after EnsureConsumer: fetched seqs %v, want [2 3 4] at once", seqs)
	}
	// And again, with nothing in flight: the consumer is kept as it is.
	if _, err := sh.EnsureConsumer(ctx); err != nil {
		t.Errorf("EnsureConsumer of a restarted consumer: %v", err)
	}
}

// TestShipper_Rewind: the peer's inbox loses what it had acknowledged (its
// ids still in the de-duplication window); asked to ship again from the
// first missing sequence, the origin's shipper delivers it all anew.
func TestShipper_Rewind(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	certDir := siteCerts(t)
	_, aJS := startSite(t, t.TempDir(), mustPort(t), "a", certDir)
	bPort := mustPort(t)
	_, bJS := startSite(t, t.TempDir(), bPort, "b", certDir)
	ob, err := ship.OpenOutbox(ctx, aJS, ship.OutboxConfig{Site: "a"})
	if err != nil {
		t.Fatal(err)
	}
	in, err := ship.OpenInbox(ctx, bJS, "b")
	if err != nil {
		t.Fatal(err)
	}
	cons, err := in.Reset(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	sh, err := ship.NewShipper(ship.ShipperConfig{Site: "a", Peer: "b", PeerURL: fmt.Sprintf("tls://127.0.0.1:%d", bPort), Outbox: ob, TLS: peerTLS(t, certDir, "a"),
		Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	defer runShipper(t, ctx, sh)()
	// Received counts the transactions the inbox holds and their lowest seq.
	received := func() (n int, low uint64) {
		t.Helper()
		msgs, err := cons.Fetch(100, jetstream.FetchMaxWait(200*time.Millisecond))
		if err != nil {
			t.Fatal(err)
		}
		for m := range msgs.Messages() {
			entries, err := ship.Entries(m.Headers(), m.Data())
			if err != nil {
				t.Fatal(err)
			}
			for _, e := range entries {
				if n++; low == 0 || e.Seq < low {
					low = e.Seq
				}
			}
			_ = m.Ack() // taken, as apply would
		}
		return n, low
	}
	// One at a time, so that each travels alone, with its transaction's
	// id as message id.
	total := 0
	for i := 1; i <= 5; i++ {
		if _, err := ob.Append(ctx, []*casualdb.Tx{tx(uint64(i))}); err != nil {
			t.Fatal(err)
		}
		pgtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
			n, _ := received()
			if total += n; total != i {
				return fmt.Errorf("inbox got %d transactions, want %d", total, i)
			}
			return nil
		})
	}
	// All five were taken (acknowledged, gone from the work queue), as if
	// lost after the inbox acknowledged them, their ids still in its
	// de-duplication window. Ship again from seq 5: alone again, so under
	// its old id but for the rewind.
	sh.Rewind(5)
	total = 0
	var low uint64
	pgtest.CheckFor(t, 20*time.Second, 10*time.Millisecond, func() error {
		n, l := received()
		if l != 0 && (low == 0 || l < low) {
			low = l
		}
		if total += n; total != 1 || low != 5 {
			return fmt.Errorf("after the rewind the inbox got %d transactions from seq %d, want 1 from seq 5", total, low)
		}
		return nil
	})
}

// TestOutbox_IDPrefix: the prefix of a site's message ids differs from peer
// to peer (a peer sees its own only) and survives reopening the outbox.
func TestOutbox_IDPrefix(t *testing.T) {
	ctx := context.Background()
	srv := startServer(t, t.TempDir(), mustPort(t))
	defer srv.Close()
	js := pgtest.JetStream(t, srv.ClientURL())
	ob, err := ship.OpenOutbox(ctx, js, ship.OutboxConfig{Site: "a"})
	if err != nil {
		t.Fatal(err)
	}
	b, c := ob.IDPrefix("b"), ob.IDPrefix("c")
	if b == c || len(b) < 16 {
		t.Errorf("prefixes for b and c: %q, %q", b, c)
	}
	again, err := ship.OpenOutbox(ctx, js, ship.OutboxConfig{Site: "a"})
	if err != nil {
		t.Fatal(err)
	}
	if got := again.IDPrefix("b"); got != b {
		t.Errorf("after reopening, b's prefix is %q, was %q", got, b)
	}
	other, err := ship.OpenOutbox(ctx, js, ship.OutboxConfig{Site: "x"})
	if err != nil {
		t.Fatal(err)
	}
	if other.IDPrefix("b") == b {
		t.Errorf("two sites' outboxes give b the same prefix")
	}
}

// publishOutbox stores txs in ob after message afterMsg, waits until they
// are durable, and returns how many messages that took.
func publishOutbox(t *testing.T, ctx context.Context, ob *ship.Outbox, txs []*casualdb.Tx, afterMsg uint64) uint64 {
	t.Helper()
	n, wait, err := ob.Publish(ctx, txs, afterMsg)
	if err == nil {
		err = wait(ctx)
	}
	if err != nil {
		t.Fatal(err)
	}
	return n
}
