package node

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/casualdb/casualdb/certs"
	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/nats-io/nats.go"
)

// TestNode_TLS: two sites whose NATS links are mutual TLS (certificates
// from `casualdb certs`), one listening on every interface, replicate; their NATS servers refuse a client
// without a certificate, one with a certificate of another CA, and a
// plain-text client.
func TestNode_TLS(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two PostgreSQL servers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir, other := t.TempDir(), t.TempDir()
	if err := certs.Generate(dir, []string{"a", "b"}, nil); err != nil {
		t.Fatal(err)
	}
	if err := certs.Generate(other, []string{"a"}, nil); err != nil {
		t.Fatal(err)
	}
	sites := startSitesWith(t, ctx, func(c *Config) {
		f := certs.For(dir, c.Site)
		c.NATS.TLS = NATSTLSConfig{Cert: f.Cert, Key: f.Key, CA: f.CA}
		if c.Site == "a" {
			// Every interface: no certificate names 0.0.0.0, which is
			// the server's own URL then.
			c.NATS.Listen = "0.0.0.0" + c.NATS.Listen[len("127.0.0.1"):]
		}
		for i := range c.Peers {
			c.Peers[i].NATSURL = "tls" + c.Peers[i].NATSURL[len("nats"):]
		}
	}, "a", "b")
	pgtest.ExecAll(t, pgtest.Connect(t, sites[0].pg.DSN()), `INSERT INTO items VALUES (1, 'over tls')`)
	waitFor(t, ctx, sites[1], `SELECT coalesce((SELECT label FROM items WHERE id = 1), '')`, "over tls")

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
}
