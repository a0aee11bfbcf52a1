package node

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"
)

// TestNode_ExternalNATSWithNKey: a site on an external NATS that requires
// an NKey starts with nats.nkey_seed_file, and is refused without it.
func TestNode_ExternalNATSWithNKey(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	user, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, err := user.PublicKey()
	if err != nil {
		t.Fatal(err)
	}
	seed, err := user.Seed()
	if err != nil {
		t.Fatal(err)
	}
	seedFile := filepath.Join(t.TempDir(), "a.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	checkExternalNATS(t, ctx, &server.Options{NoSigs: true, Nkeys: []*server.NkeyUser{{Nkey: pub}}},
		func(c *Config, file string) { c.NATS.NKeySeedFile = file }, seedFile)
}

// TestNode_ExternalNATSWithCreds: a site on an external NATS run in
// operator mode (accounts and users as JWTs) starts with nats.creds (a
// user's credentials file), and is refused without it.
func TestNode_ExternalNATSWithCreds(t *testing.T) {
	if testing.Short() {
		t.Skip("starts PostgreSQL")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	okp, err := nkeys.CreateOperator()
	must(err)
	opub, err := okp.PublicKey()
	must(err)
	oc := jwt.NewOperatorClaims(opub)
	// An account signed by the operator, with JetStream or without.
	account := func(js bool) (kp nkeys.KeyPair, pub, token string) {
		kp, err := nkeys.CreateAccount()
		must(err)
		pub, err = kp.PublicKey()
		must(err)
		ac := jwt.NewAccountClaims(pub)
		if js {
			ac.Limits.JetStreamLimits = jwt.JetStreamLimits{MemoryStorage: -1, DiskStorage: -1, Streams: -1, Consumer: -1}
		}
		token, err = ac.Encode(okp)
		must(err)
		return kp, pub, token
	}
	akp, apub, ajwt := account(true)
	ukp, err := nkeys.CreateUser()
	must(err)
	upub, err := ukp.PublicKey()
	must(err)
	useed, err := ukp.Seed()
	must(err)
	ujwt, err := jwt.NewUserClaims(upub).Encode(akp)
	must(err)
	creds, err := jwt.FormatUserConfig(ujwt, useed)
	must(err)
	credsFile := filepath.Join(t.TempDir(), "a.creds")
	must(os.WriteFile(credsFile, creds, 0o600))
	_, spub, sjwt := account(false) // operator mode wants a system account
	resolver := &server.MemAccResolver{}
	must(resolver.Store(apub, ajwt))
	must(resolver.Store(spub, sjwt))
	checkExternalNATS(t, ctx, &server.Options{NoSigs: true, TrustedOperators: []*jwt.OperatorClaims{oc}, AccountResolver: resolver, SystemAccount: spub},
		func(c *Config, file string) { c.NATS.Creds = file }, credsFile)
}

// checkExternalNATS starts a NATS server with opts (JetStream on, on a free
// loopback port), and site a on it: without the credentials (set puts file
// into the configuration) it must be refused for authorization, with them
// it must start.
func checkExternalNATS(t *testing.T, ctx context.Context, opts *server.Options, set func(*Config, string), file string) {
	t.Helper()
	port, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	opts.Host, opts.Port, opts.JetStream, opts.StoreDir = "127.0.0.1", port, true, t.TempDir()
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("external nats not ready")
	}
	pg := pgtest.NewServer(t, "a")
	pgtest.ExecAll(t, pgtest.Connect(t, pg.DSN()), `CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL)`)
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	start := func(file string) error {
		cfg := DefaultConfig()
		cfg.Site, cfg.DataDir, cfg.Database.DSN = "a", t.TempDir(), pg.DSN()
		cfg.Database.Tables = []string{"items"}
		cfg.NATS.URL, cfg.Admin.Listen = fmt.Sprintf("nats://127.0.0.1:%d", port), ""
		if file != "" {
			set(&cfg, file)
		}
		n, err := New(cfg, log)
		if err != nil {
			return err
		}
		defer n.Close()
		return n.Start(ctx)
	}
	if err := start(""); err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("start on the external NATS without credentials: %v, want an authorization error", err)
	}
	if err := start(file); err != nil {
		t.Errorf("start on the external NATS with credentials: %v", err)
	}
}
