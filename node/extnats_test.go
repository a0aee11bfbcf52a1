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
	port, err := pgtest.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: t.TempDir(), NoSigs: true,
		Nkeys: []*server.NkeyUser{{Nkey: pub}}})
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
	start := func(seed string) error {
		cfg := DefaultConfig()
		cfg.Site, cfg.DataDir, cfg.Database.DSN = "a", t.TempDir(), pg.DSN()
		cfg.Database.Tables = []string{"items"}
		cfg.NATS.URL, cfg.NATS.NKeySeedFile, cfg.Admin.Listen = fmt.Sprintf("nats://127.0.0.1:%d", port), seed, ""
		n, err := New(cfg, log)
		if err != nil {
			return err
		}
		defer n.Close()
		return n.Start(ctx)
	}
	if err := start(""); err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Errorf("start on the external NATS without the seed: %v, want an authorization error", err)
	}
	if err := start(seedFile); err != nil {
		t.Errorf("start on the external NATS with nats.nkey_seed_file: %v", err)
	}
}
