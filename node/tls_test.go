package node

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/certs"
	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/ship"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestNode_TLS: two sites whose NATS links are mutual TLS (certificates
// from `casualdb certs`), one listening on every interface, replicate; their
// NATS servers refuse a client without a certificate, one with a certificate
// of another CA, and a plain-text client. Then a's admin endpoint over HTTPS,
// a peer's permissions, forged relays, and a resend asked from far ahead.
func TestNode_TLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two PostgreSQL servers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir, other := t.TempDir(), t.TempDir()
	if err := certs.Generate(dir, []string{"a", "b", "c"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := certs.Generate(other, []string{"a"}, nil); err != nil {
		t.Fatal(err)
	}
	sites := startSitesDDL(t, ctx, []string{`CREATE TABLE wide (id int PRIMARY KEY, a text, b text)`}, func(c *Config) {
		c.Database.Tables = append(c.Database.Tables, "wide")
		f := certs.For(dir, c.Site)
		c.NATS.TLS = NATSTLSConfig{Cert: f.Cert, Key: f.Key, CA: f.CA}
		if c.Site == "a" {
			// Every interface: no certificate names 0.0.0.0, which is
			// the server's own URL then.
			c.NATS.Listen = "0.0.0.0" + c.NATS.Listen[len("127.0.0.1"):]
			// The admin endpoint over HTTPS, with a token.
			c.Admin.Listen, c.Admin.TLS, c.Admin.Token = "127.0.0.1:0", AdminTLSConfig{Cert: f.Cert, Key: f.Key}, "tok"
		}
	}, "a", "b")
	pgtest.ExecAll(t, pgtest.Connect(t, sites[0].pg.DSN()), `INSERT INTO items VALUES (1, 'over tls')`)
	waitFor(t, ctx, sites[1], `SELECT coalesce((SELECT label FROM items WHERE id = 1), '')`, "over tls")
	checkAdminHTTPS(t, ctx, sites[0], certs.For(dir, "a").CA)

	url := fmt.Sprintf("tls://127.0.0.1:%d", sites[0].nats)
	good, err := certs.ClientConfig(certs.For(dir, "b"))
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url, nats.Secure(good), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("b's certificate: %v", err)
	}
	nc.Close()
	foreign, err := certs.ClientConfig(certs.For(other, "a"))
	if err != nil {
		t.Fatal(err)
	}
	noCert := good.Clone()
	noCert.Certificates = nil
	for name, opts := range map[string][]nats.Option{
		"no certificate":          {nats.Secure(noCert)},
		"another CA's":            {nats.Secure(foreign)},
		"plain text":              nil,
		"a CA file of another CA": {nats.RootCAs(filepath.Join(other, "ca.pem")), nats.ClientCert(certs.For(other, "a").Cert, certs.For(other, "a").Key)},
	} {
		u := url
		if opts == nil {
			u = fmt.Sprintf("nats://127.0.0.1:%d", sites[0].nats)
		}
		nc, err := nats.Connect(u, append(opts, nats.Timeout(3*time.Second), nats.NoReconnect())...)
		if err == nil {
			nc.Close()
			t.Errorf("%s: connected to a's NATS", name)
		}
	}
	checkPeerPermissions(t, ctx, url, dir)
	checkForgedRelays(t, ctx, sites[0], url, dir)
	// Nothing the forgeries claimed moved a's position for b: b's next
	// genuine write (its lowest LSN yet) is applied, not taken for a
	// duplicate.
	pgtest.ExecAll(t, pgtest.Connect(t, sites[1].pg.DSN()), `INSERT INTO items VALUES (3, 'genuine from b')`)
	waitFor(t, ctx, sites[0], `SELECT coalesce((SELECT label FROM items WHERE id = 3), '')`, "genuine from b")
	checkHugeResend(t, ctx, sites, url, dir)
	checkMixedDescriptions(t, ctx, sites[0], url, dir)
}

// checkMixedDescriptions: c sends messages whose transactions (its
// sequences 2 on, after the one checkForgedRelays parked) describe a table
// differently within one run. A description naming a column a lacks parks
// only its own transaction's changes, whether it comes first or second;
// one row written under a wide and then a narrow description keeps what the
// wide one wrote (the origin dropped a column in between).
func checkMixedDescriptions(t *testing.T, ctx context.Context, a *testSite, url, dir string) {
	t.Helper()
	_, js, _ := natsAsPeer(t, url, dir, "c")
	seq := uint64(1)
	tx := func(rel casualdb.Relation, op casualdb.Op, vals ...string) []byte {
		seq++
		c := casualdb.Change{Table: rel.Table, Op: op, Key: vals[:1],
			Version: casualdb.Version{HLC: casualdb.HLC{Wall: time.Now().UnixMicro() + int64(seq)}, Origin: "c", VC: casualdb.VectorClock{"c": seq}}}
		for _, v := range vals {
			c.Values = append(c.Values, casualdb.Value{Text: v})
		}
		// LSNs after the transaction checkForgedRelays parked.
		x := &casualdb.Tx{Origin: "c", LSN: 1<<40 + seq, CommitTime: time.Now().UTC(), Relations: map[string]casualdb.Relation{rel.Table: rel},
			Changes: []casualdb.Change{c}}
		data, err := x.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		return ship.AppendEntry(nil, ship.Entry{Seq: seq, Data: data})
	}
	send := func(entries ...[]byte) {
		m := nats.NewMsg(ship.InboxSubject("a", "c"))
		m.Header.Set(ship.HeaderOrigin, "c")
		m.Header.Set(ship.HeaderEpoch, "1")
		m.Header.Set(ship.HeaderBundle, fmt.Sprint(len(entries)))
		m.Data = slices.Concat(entries...)
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		if _, err := js.PublishMsg(pctx, m); err != nil {
			t.Fatalf("c publishes %d transactions: %v", len(entries), err)
		}
	}
	col := func(name string, key bool) casualdb.Column {
		return casualdb.Column{Name: name, Type: "text", Key: key}
	}
	rel := func(table string, cols ...casualdb.Column) casualdb.Relation {
		return casualdb.Relation{Table: "public." + table, Schema: "public", Name: table, Columns: cols}
	}
	id := casualdb.Column{Name: "id", Type: "integer", Key: true}
	items := rel("items", id, col("label", false))
	ghostly := rel("items", id, col("label", false), col("ghost", false))
	send(tx(items, casualdb.OpInsert, "20", "from c"), tx(ghostly, casualdb.OpInsert, "21", "from c", "boo"))
	send(tx(ghostly, casualdb.OpInsert, "22", "from c", "boo"), tx(items, casualdb.OpInsert, "23", "from c"))
	wide, narrow := rel("wide", id, col("a", false), col("b", false)), rel("wide", id, col("b", false))
	send(tx(wide, casualdb.OpInsert, "1", "x", "y"), tx(narrow, casualdb.OpUpdate, "1", "y2"))
	waitFor(t, ctx, a, `SELECT count(*)::text FROM casualdb.parked WHERE tbl = 'public.items' AND reason LIKE '%lacks column(s) ghost%'`, "2")
	waitFor(t, ctx, a, `SELECT string_agg(id::text, ',' ORDER BY id) FROM items WHERE id >= 20`, "20,23")
	waitFor(t, ctx, a, `SELECT coalesce((SELECT a || ',' || b FROM wide WHERE id = 1), '')`, "x,y2")
}

// checkHugeResend: b, a member with valid credentials, asks a to ship to it
// again from far beyond anything a has written. a ships from what b has
// acknowledged instead (clampResend; the shipper, too, starts from b's
// acknowledgement floor when the outbox holds no such sequence), and skips
// nothing: a's next writes all reach b.
func checkHugeResend(t *testing.T, ctx context.Context, sites []*testSite, url, dir string) {
	t.Helper()
	nc, _, _ := natsAsPeer(t, url, dir, "b")
	pgtest.CheckFor(t, 30*time.Second, 100*time.Millisecond, func() error {
		rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		r, err := nc.RequestWithContext(rctx, ship.ResendSubject("a", "b"), []byte(`{"peer":"b","from":1099511627776}`))
		if err != nil {
			return err
		}
		if string(r.Data) != "ok" {
			return fmt.Errorf("a answered b's resend from 2^40: %q", r.Data)
		}
		return nil
	})
	a := pgtest.Connect(t, sites[0].pg.DSN())
	for i := 10; i < 15; i++ {
		pgtest.ExecAll(t, a, fmt.Sprintf(`INSERT INTO items VALUES (%d, 'after the resend')`, i))
	}
	waitFor(t, ctx, sites[1], `SELECT count(*)::text FROM items WHERE label = 'after the resend'`, "5")
}

// checkAdminHTTPS: a's admin endpoint (admin.tls, a token) answers /status
// and /metrics over HTTPS to a client that verifies it against the CA and
// carries the token; not without the token, not in plain HTTP, and it serves
// no profiles (admin.pprof is off).
func checkAdminHTTPS(t *testing.T, ctx context.Context, a *testSite, ca string) {
	t.Helper()
	addr := a.node.admin.Addr().String()
	good := AdminClient{URL: "https://" + addr, Token: "tok", CA: ca}
	if body, err := good.Get(ctx, "/status"); err != nil || !strings.Contains(string(body), `"site": "a"`) {
		t.Errorf("a's /status over HTTPS with the token: %q, %v", body, err)
	}
	if body, err := good.Get(ctx, "/metrics"); err != nil || !strings.Contains(string(body), "casualdb_") {
		t.Errorf("a's /metrics over HTTPS with the token: %v", err)
	}
	if _, err := good.Get(ctx, "/debug/pprof/"); err == nil {
		t.Errorf("a serves /debug/pprof without admin.pprof")
	}
	for name, c := range map[string]AdminClient{
		"no token":   {URL: "https://" + addr, CA: ca},
		"plain HTTP": {URL: "http://" + addr, Token: "tok"},
		"no CA":      {URL: "https://" + addr, Token: "tok"},
	} {
		if body, err := c.Get(ctx, "/status"); err == nil {
			t.Errorf("%s: a's /status answered: %q", name, body)
		}
	}
}

// checkForgedRelays: c, a peer with a valid certificate, relays to a a
// transaction it says b wrote (a row of items): without a proof, with a run
// c signed as itself, and with a run c signed with its own key beside b's
// certificate. a parks all three as not shown to come from b and writes
// nothing. (Genuine relays, signed by their origins, are what the hinted
// hand-off tests replicate, with TLS on.)
func checkForgedRelays(t *testing.T, ctx context.Context, a *testSite, url, dir string) {
	t.Helper()
	cCfg, err := certs.ClientConfig(certs.For(dir, "c"))
	if err != nil {
		t.Fatal(err)
	}
	_, js, _ := natsAsPeer(t, url, dir, "c")
	forged := &casualdb.Tx{Origin: "b", LSN: 1 << 40, CommitTime: time.Now().UTC(),
		Relations: map[string]casualdb.Relation{"public.items": {Table: "public.items", Schema: "public", Name: "items",
			Columns: []casualdb.Column{{Name: "id", Type: "integer", Key: true}, {Name: "label", Type: "text"}}}},
		Changes: []casualdb.Change{{Table: "public.items", Op: casualdb.OpInsert, Key: []string{"2"}, Values: []casualdb.Value{{Text: "2"}, {Text: "forged by c"}},
			Version: casualdb.Version{HLC: casualdb.HLC{Wall: time.Now().UnixMicro()}, Origin: "b", VC: casualdb.VectorClock{"b": 1 << 30}}}}}
	data, err := forged.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	signer, err := ship.NewSigner(cCfg, "c")
	if err != nil {
		t.Fatal(err)
	}
	run, err := signer.SignRun("1", 1, [][]byte{data})
	if err != nil {
		t.Fatal(err)
	}
	sig, err := base64.StdEncoding.DecodeString(strings.Fields(run)[2])
	if err != nil {
		t.Fatal(err)
	}
	// The proof of the only transaction of a run: index 0, count 1, no
	// path, then the signature (ship's encodeProof).
	ownProof := append([]byte{0, 1, 0}, sig...)
	// And what a forger can do with b's certificate, which comes with
	// every message of b's: sign a run for b with its own key.
	bCfg, err := certs.ClientConfig(certs.For(dir, "b"))
	if err != nil {
		t.Fatal(err)
	}
	asB := cCfg.Clone()
	asB.Certificates = []tls.Certificate{{Certificate: bCfg.Certificates[0].Certificate, PrivateKey: cCfg.Certificates[0].PrivateKey}}
	forger, err := ship.NewSigner(asB, "b")
	if err != nil {
		t.Fatal(err)
	}
	if run, err = forger.SignRun("1", 1, [][]byte{data}); err != nil {
		t.Fatal(err)
	}
	if sig, err = base64.StdEncoding.DecodeString(strings.Fields(run)[2]); err != nil {
		t.Fatal(err)
	}
	forgedProof := append([]byte{0, 1, 0}, sig...)
	for i, p := range []struct {
		proof []byte
		cert  string
	}{{nil, ""}, {ownProof, signer.Cert()}, {forgedProof, forger.Cert()}} {
		m := nats.NewMsg(ship.RelaySubject("a", "b", "c"))
		m.Header.Set(ship.HeaderOrigin, "b")
		m.Header.Set(ship.HeaderEpoch, "1")
		m.Header.Set(ship.HeaderSeq, "1")
		if p.proof != nil {
			m.Header.Set(ship.HeaderProof, base64.StdEncoding.EncodeToString(p.proof))
			m.Header.Set(ship.HeaderCert, p.cert)
		}
		m.Header.Set(nats.MsgIdHdr, fmt.Sprintf("forged-%d", i))
		m.Data = data
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := js.PublishMsg(pctx, m)
		cancel()
		if err != nil {
			t.Fatalf("c relays a transaction it says is b's: %v", err)
		}
	}
	waitFor(t, ctx, a, `SELECT count(*)::text FROM casualdb.parked WHERE reason LIKE '%relayed by c is not shown to come from b%'`, "3")
	waitFor(t, ctx, a, `SELECT count(*)::text FROM casualdb.parked WHERE reason LIKE '%relayed by c is not shown to come from b: signature: bad signature%'`, "1")
	waitFor(t, ctx, a, `SELECT count(*)::text FROM items WHERE id = 2`, "0")

	// On its own subject, c sends a transaction of its own that writes a
	// row of CasualDB's bookkeeping: parked, never applied.
	evil := &casualdb.Tx{Origin: "c", LSN: 1 << 40, CommitTime: time.Now().UTC(),
		Relations: map[string]casualdb.Relation{"casualdb.progress": {Table: "casualdb.progress", Schema: "casualdb", Name: "progress",
			Columns: []casualdb.Column{{Name: "origin", Type: "text", Key: true}, {Name: "seq", Type: "bigint"}}}},
		Changes: []casualdb.Change{{Table: "casualdb.progress", Op: casualdb.OpInsert, Key: []string{"evil"}, Values: []casualdb.Value{{Text: "evil"}, {Text: "1"}},
			Version: casualdb.Version{HLC: casualdb.HLC{Wall: time.Now().UnixMicro()}, Origin: "c", VC: casualdb.VectorClock{"c": 1}}}}}
	if data, err = evil.Marshal(); err != nil {
		t.Fatal(err)
	}
	m := nats.NewMsg(ship.InboxSubject("a", "c"))
	m.Header.Set(ship.HeaderOrigin, "c")
	m.Header.Set(ship.HeaderEpoch, "1")
	m.Header.Set(ship.HeaderSeq, "1")
	m.Data = data
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if _, err := js.PublishMsg(pctx, m); err != nil {
		t.Fatalf("c publishes its own transaction: %v", err)
	}
	waitFor(t, ctx, a, `SELECT count(*)::text FROM casualdb.parked WHERE tbl = 'casualdb.progress' AND reason LIKE '%not a replicated table%'`, "1")
	waitFor(t, ctx, a, `SELECT count(*)::text FROM casualdb.progress WHERE origin = 'evil'`, "0")
}

// natsAsPeer connects to the NATS at url as site (its certificate in dir),
// and returns the connection's asynchronous errors (permission violations).
func natsAsPeer(t *testing.T, url, dir, site string) (*nats.Conn, jetstream.JetStream, chan error) {
	t.Helper()
	cfg, err := certs.ClientConfig(certs.For(dir, site))
	if err != nil {
		t.Fatal(err)
	}
	errs := make(chan error, 16)
	nc, err := nats.Connect(url, append(ship.PeerOptions(cfg, casualdb.SiteID(site)), nats.Timeout(5*time.Second), nats.NoReconnect(),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))...)
	if err != nil {
		t.Fatalf("%s's certificate: %v", site, err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return nc, js, errs
}

// checkPeerPermissions: at site a's NATS (url), a client is the site its
// certificate names, with that site's permissions. c (a certificate of the
// cluster's CA, not a member) may not publish as b, purge or delete a's
// streams, make a consumer, or read a's subjects or other clients'
// replies; it may publish its own transactions and relay others' as itself.
// Nothing it was refused reached a's inbox.
func checkPeerPermissions(t *testing.T, ctx context.Context, url, dir string) {
	t.Helper()
	as := func(site string) (*nats.Conn, jetstream.JetStream, chan error) { return natsAsPeer(t, url, dir, site) }
	_, own, _ := as("a") // a's own certificate: the site itself, unrestricted
	inbox, err := own.Stream(ctx, ship.InboxStream("a"))
	if err != nil {
		t.Fatalf("a's own certificate cannot read a's inbox: %v", err)
	}
	msgs := func() uint64 {
		info, err := inbox.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return info.State.LastSeq // trimming may remove what apply acknowledged meanwhile
	}
	before := msgs()

	nc, js, errs := as("c")
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 2*time.Second) }
	pctx, cancel := short()
	if _, err := js.Publish(pctx, ship.InboxSubject("a", "b"), []byte("forged")); err == nil {
		t.Errorf("c published into b's inbox subject at a")
	}
	cancel()
	pctx, cancel = short()
	if err := js.DeleteStream(pctx, ship.InboxStream("a")); err == nil {
		t.Errorf("c deleted a's inbox")
	}
	cancel()
	pctx, cancel = short()
	if _, err := nc.RequestWithContext(pctx, "$JS.API.STREAM.PURGE."+ship.OutboxStream("a"), nil); err == nil {
		t.Errorf("c purged a's outbox")
	}
	cancel()
	pctx, cancel = short()
	if _, err := js.CreateOrUpdateConsumer(pctx, ship.OutboxStream("a"), jetstream.ConsumerConfig{Durable: "thief"}); err == nil {
		t.Errorf("c made a consumer of a's outbox")
	}
	cancel()
	for _, subj := range []string{"casualdb.>", "_INBOX.>", ship.PeerInboxPrefix("b") + ".>"} {
		if _, err := nc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-errs:
			if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				t.Errorf("c's subscription to %s: %v", subj, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("c subscribed to %s at a", subj)
		}
	}
	// A request whose reply subject is the JetStream API: the sidecar
	// answers on its own connection, and must not answer there.
	outbox, err := own.Stream(ctx, ship.OutboxStream("a"))
	if err != nil {
		t.Fatal(err)
	}
	oinfo, err := outbox.Info(ctx)
	if err != nil || oinfo.State.Msgs == 0 {
		t.Fatalf("a's outbox: %v, %+v", err, oinfo)
	}
	for _, subj := range []string{ship.ResendSubject("a", "c"), ship.CheckSubject("a")} {
		if err := nc.PublishRequest(subj, "$JS.API.STREAM.PURGE."+ship.OutboxStream("a"), []byte(`{"peer":"c","from":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	// A proper request after them: answered once they were handled.
	pctx, cancel = short()
	if _, err := nc.RequestWithContext(pctx, ship.ResendSubject("a", "c"), []byte(`{"peer":"c","from":1}`)); err != nil {
		t.Errorf("c's resend request: %v", err)
	}
	cancel()
	pctx, cancel = context.WithTimeout(ctx, time.Minute)
	if _, err := nc.RequestWithContext(pctx, ship.CheckSubject("a"), []byte(`{}`)); err != nil {
		t.Errorf("c's check request: %v", err)
	}
	cancel()
	// A digest of 10^12 buckets would size an allocation by the count:
	// refused with the reason, and a answers the next request.
	pctx, cancel = context.WithTimeout(ctx, time.Minute)
	for _, rw := range [][2]string{
		{`{"op":"summary","table":"public.items","buckets":1000000000000}`, "buckets (1 to"},
		{`{"op":"summary","table":"public.items","buckets":4}`, `"summary"`},
	} {
		r, err := nc.RequestWithContext(pctx, ship.CheckSubject("a"), []byte(rw[0]))
		if err != nil || !strings.Contains(string(r.Data), rw[1]) {
			t.Errorf("c's check request %s: %v, %v (want %s)", rw[0], err, r, rw[1])
		}
	}
	cancel()
	if now, err := outbox.Info(ctx); err != nil || now.State.FirstSeq != oinfo.State.FirstSeq || now.State.Msgs < oinfo.State.Msgs {
		t.Errorf("a's outbox after requests replying to the purge API: %v, first seq %d (was %d), %d messages (were %d)",
			err, now.State.FirstSeq, oinfo.State.FirstSeq, now.State.Msgs, oinfo.State.Msgs)
	}
	if n := msgs(); n != before {
		t.Errorf("a's inbox's last sequence is %d after c's refused attempts, %d before", n, before)
	}
	// c may ask only for itself: not on b's subject, nor for b on its own.
	pctx, cancel = short()
	if r, err := nc.RequestWithContext(pctx, ship.ResendSubject("a", "b"), []byte(`{"peer":"b","from":1}`)); err == nil {
		t.Errorf("c asked a to resend to b on b's subject: %q", r.Data)
	}
	cancel()
	for _, subj := range []string{ship.ResendSubject("a", "c"), "casualdb.resend.a"} {
		pctx, cancel = short()
		r, err := nc.RequestWithContext(pctx, subj, []byte(`{"peer":"b","from":1}`))
		cancel()
		if err == nil && !strings.HasPrefix(string(r.Data), "refused") {
			t.Errorf("c asked a on %s to resend to b: %q", subj, r.Data)
		}
	}
	// What c may do: its own subject, and a relay as itself (both parked
	// at a as garbled: nothing here is a transaction).
	pctx, cancel = short()
	defer cancel()
	if _, err := js.Publish(pctx, ship.InboxSubject("a", "c"), []byte("c's own")); err != nil {
		t.Errorf("c may not publish its own transactions to a: %v", err)
	}
	if _, err := js.Publish(pctx, ship.RelaySubject("a", "b", "c"), []byte("b's, relayed by c")); err != nil {
		t.Errorf("c may not relay a hint to a: %v", err)
	}
}
