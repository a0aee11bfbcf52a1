package ship_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/ship"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/goleak"
)

// inboxMsg is the part of a delivered inbox message DecodeInboxMsg reads.
type inboxMsg struct {
	jetstream.Msg // nil: any other method panics
	h             nats.Header
	data          []byte
	sseq          uint64
	subject       string // default: casualdb.in.b.<the origin header>
}

func (m *inboxMsg) Subject() string {
	if m.subject != "" {
		return m.subject
	}
	return ship.InboxSubject("b", casualdb.SiteID(m.h.Get(ship.HeaderOrigin)))
}

func (m *inboxMsg) Headers() nats.Header { return m.h }
func (m *inboxMsg) Data() []byte         { return m.data }
func (m *inboxMsg) Metadata() (*jetstream.MsgMetadata, error) {
	return &jetstream.MsgMetadata{Sequence: jetstream.SequencePair{Stream: m.sseq}}, nil
}

func TestDecodeInboxMsg(t *testing.T) {
	encode := func(origin casualdb.SiteID, lsn uint64) []byte {
		tx := tx(lsn)
		tx.Origin = origin
		b, err := tx.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	header := func(kv ...string) nats.Header {
		h := nats.Header{}
		for i := 0; i < len(kv); i += 2 {
			h.Set(kv[i], kv[i+1])
		}
		return h
	}
	var bundle []byte
	bundle = ship.AppendEntry(bundle, ship.Entry{Seq: 5, Data: encode("a", 500)})
	bundle = ship.AppendEntry(bundle, ship.Entry{Seq: 6, Data: []byte("garbage")})
	bundle = ship.AppendEntry(bundle, ship.Entry{Seq: 7, Data: encode("b", 700)})
	bundle = ship.AppendEntry(bundle, ship.Entry{Seq: 8, Data: encode("a", 800)})

	for _, c := range []struct {
		name    string
		m       *inboxMsg
		wantErr bool     // the message as a whole does not decode
		want    []string // per transaction: its LSN, or "garbled"
		relayer casualdb.SiteID
	}{
		{name: "single", m: &inboxMsg{h: header(ship.HeaderOrigin, "a", ship.HeaderEpoch, "e1", ship.HeaderSeq, "3", ship.HeaderLSN, "300"), data: encode("a", 300), sseq: 9},
			want: []string{"300"}},
		{name: "bundle with bad transactions", m: &inboxMsg{h: header(ship.HeaderOrigin, "a", ship.HeaderEpoch, "e1", ship.HeaderSeq, "5", ship.HeaderBundle, "4", ship.HeaderLSN, "800"), data: bundle, sseq: 10},
			want: []string{"500", "garbled", "garbled", "800"}},
		{name: "relayed", m: &inboxMsg{h: header(ship.HeaderOrigin, "a", ship.HeaderSeq, "3", ship.HeaderLSN, "300"), data: encode("a", 300),
			subject: ship.RelaySubject("b", "a", "c")}, want: []string{"300"}, relayer: "c"},
		{name: "another origin's subject", m: &inboxMsg{h: header(ship.HeaderOrigin, "a", ship.HeaderSeq, "3", ship.HeaderLSN, "300"), data: encode("a", 300),
			subject: ship.InboxSubject("b", "c")}, wantErr: true},
		{name: "relayed as another origin's", m: &inboxMsg{h: header(ship.HeaderOrigin, "a", ship.HeaderSeq, "3", ship.HeaderLSN, "300"), data: encode("a", 300),
			subject: ship.RelaySubject("b", "c", "a")}, wantErr: true, relayer: "a"},
		{name: "no origin", m: &inboxMsg{h: header(ship.HeaderSeq, "3", ship.HeaderLSN, "300"), data: encode("a", 300)}, wantErr: true},
		{name: "bad framing", m: &inboxMsg{h: header(ship.HeaderOrigin, "a", ship.HeaderSeq, "5", ship.HeaderBundle, "5", ship.HeaderLSN, "800"), data: bundle}, wantErr: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := ship.DecodeInboxMsg(c.m)
			if got.Acker != c.m || got.StreamSeq != c.m.sseq || string(got.Data) != string(c.m.data) {
				t.Errorf("handle %v, stream seq %d, %d bytes; want the message, %d, %d", got.Acker, got.StreamSeq, len(got.Data), c.m.sseq, len(c.m.data))
			}
			if got.Origin != casualdb.SiteID(c.m.h.Get(ship.HeaderOrigin)) || got.Epoch != c.m.h.Get(ship.HeaderEpoch) ||
				strconv.FormatUint(got.Seq, 10) != c.m.h.Get(ship.HeaderSeq) || strconv.FormatUint(got.LSN, 10) != c.m.h.Get(ship.HeaderLSN) {
				t.Errorf("headers decoded as origin %q epoch %q seq %d lsn %d; want %v", got.Origin, got.Epoch, got.Seq, got.LSN, c.m.h)
			}
			if got.Relayer != c.relayer {
				t.Errorf("relayer %q on subject %s, want %q", got.Relayer, c.m.Subject(), c.relayer)
			}
			if c.wantErr {
				if !errors.Is(got.Err, casualdb.ErrGarbled) || len(got.Txs) != 0 {
					t.Errorf("err %v with %d transactions, want ErrGarbled and none", got.Err, len(got.Txs))
				}
				return
			}
			if got.Err != nil {
				t.Fatal(got.Err)
			}
			var txs []string
			for _, e := range got.Txs {
				switch {
				case e.Err != nil && e.Tx == nil && e.Data != nil:
					txs = append(txs, "garbled")
				case e.Err == nil && e.Tx != nil && e.Tx.Seq == e.Seq:
					txs = append(txs, strconv.FormatUint(e.Tx.LSN, 10))
				default:
					txs = append(txs, "?")
				}
			}
			if !slices.Equal(txs, c.want) {
				t.Errorf("transactions %v, want %v", txs, c.want)
			}
		})
	}
}

// TestInbox_Consume: the consumer of an origin hands apply every message of
// that origin decoded, garbled ones included, and stop waits for it.
func TestInbox_Consume(t *testing.T) {
	ctx, js, in := openTestInbox(t)
	publish := func(origin casualdb.SiteID, seq uint64, data []byte) { publishInbox(t, ctx, js, origin, seq, data) }
	for i := uint64(1); i <= 3; i++ {
		b, err := tx(100 * i).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		publish("a", i, b)
	}
	publish("a", 4, []byte("garbage"))
	publish("c", 1, []byte("not a's"))

	got := make(chan *casualdb.InboxMsg, 10)
	stop, err := in.Consume(ctx, "a", 2, func(m *casualdb.InboxMsg) { got <- m })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	for want := uint64(1); want <= 4; want++ {
		select {
		case m := <-got:
			if m.Err != nil || len(m.Txs) != 1 || m.Origin != "a" || m.Epoch != "e1" || m.StreamSeq == 0 || m.Txs[0].Seq != want {
				t.Fatalf("message %d: %+v", want, m)
			}
			if e := m.Txs[0]; (want <= 3) != (e.Err == nil && e.Tx != nil && e.Tx.LSN == 100*want) {
				t.Errorf("transaction %d decoded as %+v", want, e)
			}
			if err := m.Ack(); err != nil {
				t.Fatal(err)
			}
		case <-ctx.Done():
			t.Fatalf("message %d did not come", want)
		}
	}
	stop()
	select {
	case m := <-got:
		t.Errorf("another origin's message came: %+v", m)
	default:
	}
}

// TestInbox_Trim: an acknowledgement leaves the message in the inbox until
// Trim, which removes what lies below each origin consumer's floor and
// counts what waits: the unacknowledged, and all of an origin no consumer
// reads yet. A new consumer of the origin then starts after the trimmed.
func TestInbox_Trim(t *testing.T) {
	ctx, js, in := openTestInbox(t)
	publish := func(origin casualdb.SiteID, seq uint64) {
		b, err := tx(100 * seq).Marshal()
		if err != nil {
			t.Fatal(err)
		}
		publishInbox(t, ctx, js, origin, seq, b)
	}
	for i := uint64(1); i <= 3; i++ {
		publish("a", i)
	}
	publish("c", 1)
	publish("c", 2)

	got := make(chan *casualdb.InboxMsg, 10)
	stop, err := in.Consume(ctx, "a", 10, func(m *casualdb.InboxMsg) { got <- m })
	if err != nil {
		t.Fatal(err)
	}
	for want := uint64(1); want <= 3; want++ {
		m := <-got
		if m.Txs[0].Seq != want {
			t.Fatalf("message %d: %+v", want, m)
		}
		if want <= 2 {
			if err := m.Ack(); err != nil {
				t.Fatal(err)
			}
		}
	}
	stream, err := js.Stream(ctx, ship.InboxStream("b"))
	if err != nil {
		t.Fatal(err)
	}
	msgs := func() uint64 {
		info, err := stream.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Msgs
	}
	if n := msgs(); n != 5 {
		t.Fatalf("before Trim the inbox holds %d messages, not 5 (acknowledged ones stay until trimmed)", n)
	}
	// The acknowledgements reach the server asynchronously.
	pgtest.CheckFor(t, 10*time.Second, 20*time.Millisecond, func() error {
		pending, err := in.Trim(ctx)
		if err != nil {
			return err
		}
		if pending != 3 {
			return fmt.Errorf("Trim counts %d waiting, want 3 (a's third, c's two)", pending)
		}
		return nil
	})
	if n := msgs(); n != 3 {
		t.Fatalf("after Trim the inbox holds %d messages, want 3", n)
	}
	stop()
	// A new consumer of a (apply restarting) gets the unacknowledged one
	// first, not the trimmed ones.
	stop, err = in.Consume(ctx, "a", 10, func(m *casualdb.InboxMsg) { got <- m })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	select {
	case m := <-got:
		if m.Txs[0].Seq != 3 {
			t.Fatalf("after a restart the first message carries %d, want 3", m.Txs[0].Seq)
		}
	case <-ctx.Done():
		t.Fatal("the unacknowledged message did not come again")
	}
}

// TestOpenInbox_WorkQueueOfEarlierVersion: an earlier version's work-queue
// inbox is replaced when empty; one holding messages is kept, nothing in it
// lost, and counted as it was (every message waits).
func TestOpenInbox_WorkQueueOfEarlierVersion(t *testing.T) {
	t.Cleanup(func() { goleak.VerifyNone(t) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	s := startServer(t, t.TempDir(), mustPort(t))
	t.Cleanup(s.Close)
	js := pgtest.JetStream(t, s.ClientURL())
	old := func(site casualdb.SiteID) {
		if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: ship.InboxStream(site), Subjects: []string{"casualdb.in." + string(site) + ".>"},
			Storage: jetstream.FileStorage, Retention: jetstream.WorkQueuePolicy}); err != nil {
			t.Fatal(err)
		}
	}
	retention := func(site casualdb.SiteID) jetstream.RetentionPolicy {
		st, err := js.Stream(ctx, ship.InboxStream(site))
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.Config.Retention
	}
	old("b")
	if _, err := ship.OpenInbox(ctx, js, "b"); err != nil {
		t.Fatal(err)
	}
	if r := retention("b"); r != jetstream.LimitsPolicy {
		t.Errorf("the empty work queue was not replaced: retention %v", r)
	}

	old("d")
	if _, err := js.Publish(ctx, ship.InboxSubject("d", "a"), []byte("x")); err != nil {
		t.Fatal(err)
	}
	in, err := ship.OpenInbox(ctx, js, "d")
	if err != nil {
		t.Fatal(err)
	}
	if r := retention("d"); r != jetstream.WorkQueuePolicy {
		t.Errorf("a work queue holding a message was replaced: retention %v", r)
	}
	if n, err := in.Trim(ctx); err != nil || n != 1 {
		t.Errorf("Trim of the kept work queue: %d waiting, %v; want 1", n, err)
	}
	// Still listening: a peer's publish is stored.
	if _, err := js.Publish(ctx, ship.InboxSubject("d", "a"), []byte("y")); err != nil {
		t.Errorf("the kept work queue does not take messages: %v", err)
	}
}

// publishInbox publishes data into site b's inbox as origin's transaction
// seq (epoch e1).
func publishInbox(t *testing.T, ctx context.Context, js jetstream.JetStream, origin casualdb.SiteID, seq uint64, data []byte) {
	t.Helper()
	m := nats.NewMsg(ship.InboxSubject("b", origin))
	m.Header.Set(ship.HeaderOrigin, string(origin))
	m.Header.Set(ship.HeaderEpoch, "e1")
	m.Header.Set(ship.HeaderSeq, strconv.FormatUint(seq, 10))
	m.Data = data
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
}

// openTestInbox starts a NATS server and opens site b's inbox there; the
// context ends with the test (a minute at most).
func openTestInbox(t *testing.T) (context.Context, jetstream.JetStream, *ship.Inbox) {
	t.Helper()
	t.Cleanup(func() { goleak.VerifyNone(t) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	t.Cleanup(cancel)
	s := startServer(t, t.TempDir(), mustPort(t))
	t.Cleanup(s.Close)
	js := pgtest.JetStream(t, s.ClientURL())
	in, err := ship.OpenInbox(ctx, js, "b")
	if err != nil {
		t.Fatal(err)
	}
	return ctx, js, in
}

// TestInbox_OriginsSkipsMisnamed: a peer may publish relays under any
// origin token. Origins lists only site names (a consumer named after
// "x/y" cannot be made, and apply would fail on it for good); the others
// are counted, and their messages left in the inbox.
func TestInbox_OriginsSkipsMisnamed(t *testing.T) {
	ctx, js, in := openTestInbox(t)
	for _, subj := range []string{ship.InboxSubject("b", "a"), "casualdb.in.b.x/y.a", "casualdb.in.b.X\xff.a", ship.RelaySubject("b", "c", "a")} {
		if _, err := js.Publish(ctx, subj, []byte("m")); err != nil {
			t.Fatalf("publish on %q: %v", subj, err)
		}
	}
	got, err := in.Origins(ctx)
	if err != nil || !slices.Equal(got, []casualdb.SiteID{"a", "c"}) {
		t.Errorf("Origins = %v, %v; want [a c]", got, err)
	}
	if n := in.Misnamed(); n != 2 {
		t.Errorf("Misnamed() = %d, want 2", n)
	}
	for _, o := range got {
		if _, err := in.Reset(ctx, o); err != nil {
			t.Errorf("a consumer for %s: %v", o, err)
		}
	}
}
