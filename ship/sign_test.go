package ship_test

import (
	"bytes"
	"encoding/base64"
	"errors"
	"io"
	"log/slog"
	"strconv"
	"strings"
	"testing"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/certs"
	"github.com/casualdb/casualdb/ship"
	"github.com/nats-io/nats.go"
)

// TestRelaySignatures: an origin's outbox signs its runs of transactions;
// shipped to a peer (here several runs in one message), each transaction
// comes with its proof. A relay of one of them by a third site, with the
// proof and the origin's certificate, is taken by an inbox that verifies
// relays; one that changes the data, the sequence or the epoch, lacks the
// proof, or carries a certificate of another CA or of another site, is
// garbled.
func TestRelaySignatures(t *testing.T) {
	dir, other := t.TempDir(), t.TempDir()
	if err := certs.Generate(dir, []string{"a", "b"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := certs.Generate(other, []string{"a"}, nil); err != nil {
		t.Fatal(err)
	}
	cfg := func(dir, site string) *ship.Signer {
		c, err := certs.ClientConfig(certs.For(dir, site))
		if err != nil {
			t.Fatal(err)
		}
		s, err := ship.NewSigner(c, "a")
		if site != "a" {
			if !errors.Is(err, casualdb.ErrConfig) || !strings.Contains(err.Error(), `names "b"`) {
				t.Fatalf("a signer for a with b's certificate: %v", err)
			}
			return nil
		}
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	signer := cfg(dir, "a")
	cfg(dir, "b")
	bCfg, err := certs.ClientConfig(certs.For(dir, "b"))
	if err != nil {
		t.Fatal(err)
	}

	ctx, js, in := openTestInbox(t)
	in.VerifyRelays(ship.NewRelayVerifier(bCfg))
	var logged bytes.Buffer // written by the consumer's goroutine, read after next() returns
	in.KeepProofs(slog.New(slog.NewTextHandler(&logged, nil)))
	srvURL := js.Conn().ConnectedUrl()
	ob, err := ship.OpenOutbox(ctx, js, ship.OutboxConfig{Site: "a", Signer: signer})
	if err != nil {
		t.Fatal(err)
	}
	var msgs uint64
	for _, run := range [][]uint64{{1, 2, 3}, {4}} {
		var txs []*casualdb.Tx
		for _, seq := range run {
			x := tx(100 * seq)
			x.Seq = seq
			txs = append(txs, x)
		}
		msgs += publishOutbox(t, ctx, ob, txs, msgs)
	}
	sh, err := ship.NewShipper(ship.ShipperConfig{Site: "a", Peer: "b", PeerURL: srvURL, Outbox: ob, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	stopShipper := runShipper(t, ctx, sh)
	defer stopShipper()

	got := make(chan *casualdb.InboxMsg, 16)
	stop, err := in.Consume(ctx, "a", 16, func(m *casualdb.InboxMsg) { got <- m })
	if err != nil {
		t.Fatal(err)
	}
	defer stop()
	next := func() *casualdb.InboxMsg {
		select {
		case m := <-got:
			if err := m.Ack(); err != nil {
				t.Errorf("ack: %v", err)
			}
			return m
		case <-ctx.Done():
			t.Fatal("no message came")
			return nil
		}
	}
	shipped := map[uint64]casualdb.InboxTx{}
	var cert []byte
	for len(shipped) < 4 {
		m := next()
		if m.Err != nil || m.Cert == nil {
			t.Fatalf("shipped message: %+v", m)
		}
		cert = m.Cert
		for _, x := range m.Txs {
			if x.Err != nil || len(x.Proof) == 0 {
				t.Fatalf("shipped transaction %d: %v, proof %x", x.Seq, x.Err, x.Proof)
			}
			shipped[x.Seq] = x
		}
	}

	relay := func(seq uint64, data, proof, cert []byte, epoch string) *casualdb.InboxMsg {
		t.Helper()
		m := nats.NewMsg(ship.RelaySubject("b", "a", "c"))
		m.Header.Set(ship.HeaderOrigin, "a")
		m.Header.Set(ship.HeaderEpoch, epoch)
		m.Header.Set(ship.HeaderSeq, strconv.FormatUint(seq, 10))
		if proof != nil {
			m.Header.Set(ship.HeaderProof, base64.StdEncoding.EncodeToString(proof))
			m.Header.Set(ship.HeaderCert, base64.StdEncoding.EncodeToString(cert))
		}
		m.Data = data
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
		return next()
	}
	epoch := ob.Epoch()
	for seq := uint64(1); seq <= 4; seq++ {
		x := shipped[seq]
		if m := relay(seq, x.Data, x.Proof, cert, epoch); m.Err != nil || len(m.Txs) != 1 || m.Txs[0].Err != nil || m.Txs[0].Tx.LSN != 100*seq {
			t.Errorf("a genuine relay of transaction %d: %+v", seq, m)
		}
	}
	forgedData, err := tx(999).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	x1, x2 := shipped[1], shipped[2]
	foreignCert, err := certs.ClientConfig(certs.For(other, "a"))
	if err != nil {
		t.Fatal(err)
	}
	bCert, err := certs.ClientConfig(certs.For(dir, "b"))
	if err != nil {
		t.Fatal(err)
	}
	for name, m := range map[string]func() *casualdb.InboxMsg{
		"other data":       func() *casualdb.InboxMsg { return relay(1, forgedData, x1.Proof, cert, epoch) },
		"another's data":   func() *casualdb.InboxMsg { return relay(1, x2.Data, x1.Proof, cert, epoch) },
		"another sequence": func() *casualdb.InboxMsg { return relay(2, x1.Data, x1.Proof, cert, epoch) },
		"another epoch":    func() *casualdb.InboxMsg { return relay(1, x1.Data, x1.Proof, cert, "1") },
		"no proof":         func() *casualdb.InboxMsg { return relay(1, x1.Data, nil, nil, epoch) },
		"another CA's cert": func() *casualdb.InboxMsg {
			return relay(1, x1.Data, x1.Proof, foreignCert.Certificates[0].Certificate[0], epoch)
		},
		"another site's cert": func() *casualdb.InboxMsg {
			return relay(1, x1.Data, x1.Proof, bCert.Certificates[0].Certificate[0], epoch)
		},
		"a proof that is no proof": func() *casualdb.InboxMsg { return relay(1, x1.Data, []byte("nonsense"), cert, epoch) },
	} {
		got := m()
		if got.Err != nil || len(got.Txs) != 1 {
			t.Errorf("%s: %+v", name, got)
			continue
		}
		if e := got.Txs[0].Err; !errors.Is(e, casualdb.ErrGarbled) || !strings.Contains(e.Error(), "not shown to come from a") || got.Txs[0].Tx != nil {
			t.Errorf("%s: taken, or refused for another reason: %v", name, e)
		}
	}

	// The origin's own message with a signature header that does not fit
	// its transactions: applied (the subject shows who sent it), counted,
	// and left without a proof, so that no relay of it is ever taken.
	if n := in.Unproven(); n != 0 {
		t.Fatalf("unproven before any misfit: %d", n)
	}
	data5, err := tx(500).Marshal()
	if err != nil {
		t.Fatal(err)
	}
	direct := nats.NewMsg(ship.InboxSubject("b", "a"))
	direct.Header.Set(ship.HeaderOrigin, "a")
	direct.Header.Set(ship.HeaderEpoch, epoch)
	direct.Header.Set(ship.HeaderSeq, "5")
	direct.Header.Set(ship.HeaderSig, "9 1 AAAA")
	direct.Header.Set(ship.HeaderCert, base64.StdEncoding.EncodeToString(cert))
	direct.Data = data5
	if _, err := js.PublishMsg(ctx, direct); err != nil {
		t.Fatal(err)
	}
	if m := next(); m.Err != nil || len(m.Txs) != 1 || m.Txs[0].Err != nil || m.Txs[0].Tx.LSN != 500 || m.Txs[0].Proof != nil || m.Cert != nil {
		t.Errorf("a direct message whose signature does not fit: %+v", m)
	}
	if n := in.Unproven(); n != 1 {
		t.Errorf("unproven transactions: %d, want 1", n)
	}
	// More of them are all counted, and logged once a minute at most: a
	// peer sending misfits cannot fill the log.
	for seq := 6; seq <= 8; seq++ {
		direct.Header.Set(ship.HeaderSeq, strconv.Itoa(seq))
		if _, err := js.PublishMsg(ctx, direct); err != nil {
			t.Fatal(err)
		}
		if m := next(); m.Err != nil || len(m.Txs) != 1 || m.Txs[0].Proof != nil {
			t.Errorf("misfit %d: %+v", seq, m)
		}
	}
	if n := in.Unproven(); n != 4 {
		t.Errorf("unproven transactions: %d, want 4", n)
	}
	if n := strings.Count(logged.String(), "does not fit them"); n != 1 {
		t.Errorf("%d warnings of misfit signatures logged, want 1:\n%s", n, logged.String())
	}
}
