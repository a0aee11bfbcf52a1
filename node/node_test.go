package node

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/casualdb/casualdb/certs"
	"github.com/casualdb/casualdb/internal/pgtest"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// testSite is one site of an embedded test cluster.
type testSite struct {
	name string
	pg   *pgtest.Server
	nats int
	node *Node
}

// startSites starts len(names) sites, each with table items, running until
// the test ends: a program embedding the library would do the same.
func startSites(t *testing.T, ctx context.Context, names ...string) []*testSite {
	t.Helper()
	return startSitesWith(t, ctx, nil, names...)
}

// startSitesWith is startSites with tune applied to every site's
// configuration (nil: none).
func startSitesWith(t *testing.T, ctx context.Context, tune func(*Config), names ...string) []*testSite {
	t.Helper()
	return startSitesDDL(t, ctx, nil, tune, names...)
}

// startSitesDDL is startSitesWith with more statements run at every site
// before its sidecar starts. The sites' NATS links are mutual TLS with
// per-site permissions, as a user runs them (certificates from `casualdb
// certs`, in a directory of the test's).
func startSitesDDL(t *testing.T, ctx context.Context, ddl []string, tune func(*Config), names ...string) []*testSite {
	t.Helper()
	certDir := t.TempDir()
	if err := certs.Generate(certDir, names, nil); err != nil {
		t.Fatal(err)
	}
	var sites []*testSite
	for _, name := range names {
		s := &testSite{name: name, pg: pgtest.NewServer(t, name)}
		pgtest.ExecAll(t, pgtest.Connect(t, s.pg.DSN()), append([]string{`CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL)`}, ddl...)...)
		port, err := pgtest.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		s.nats = port
		sites = append(sites, s)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	done := make(chan error, len(sites))
	runCtx, stop := context.WithCancel(ctx)
	started := 0
	t.Cleanup(func() {
		stop()
		for range started {
			if err := <-done; err != nil {
				t.Errorf("Run: %v", err)
			}
		}
		for _, s := range sites {
			if s.node != nil {
				s.node.Close()
			}
		}
	})
	for _, s := range sites {
		cfg := DefaultConfig()
		cfg.Site, cfg.DataDir, cfg.Database.DSN = s.name, filepath.Join(t.TempDir(), s.name), s.pg.DSN()
		cfg.Database.Tables = []string{"items"}
		cfg.NATS.Listen, cfg.Admin.Listen = fmt.Sprintf("127.0.0.1:%d", s.nats), ""
		f := certs.For(certDir, s.name)
		cfg.NATS.TLS = NATSTLSConfig{Cert: f.Cert, Key: f.Key, CA: f.CA}
		for _, p := range sites {
			if p != s {
				cfg.Peers = append(cfg.Peers, PeerConfig{Name: p.name, NATSURL: fmt.Sprintf("tls://127.0.0.1:%d", p.nats)})
			}
		}
		if tune != nil {
			tune(&cfg)
		}
		n, err := New(cfg, log)
		if err != nil {
			t.Fatal(err)
		}
		if err := n.Start(ctx); err != nil {
			t.Fatalf("start %s: %v", s.name, err)
		}
		s.node = n
		started++
		go func() { done <- n.Run(runCtx) }()
	}
	return sites
}

// waitFor polls sql at site until it returns want, for a minute.
func waitFor(t *testing.T, ctx context.Context, s *testSite, sql, want string) {
	t.Helper()
	waitForWithin(t, ctx, time.Minute, s, sql, want)
}

// waitForWithin polls sql at site until it returns want, for at most d.
func waitForWithin(t *testing.T, ctx context.Context, d time.Duration, s *testSite, sql, want string) {
	t.Helper()
	conn := pgtest.Connect(t, s.pg.DSN())
	pgtest.CheckFor(t, d, min(d/100, time.Second), func() error {
		var got string
		if err := conn.QueryRow(ctx, sql).Scan(&got); err != nil {
			return err
		}
		if got != want {
			return fmt.Errorf("site %s: %s = %q, want %q", s.name, sql, got, want)
		}
		return nil
	})
}

// TestNode_Embedded runs two sites as a program embedding the library
// would, without the command line: New, Start, Run, Status, Close. Every
// goroutine a node starts ends with Run and Close (TestMain checks).
func TestNode_Embedded(t *testing.T) {
	if testing.Short() {
		t.Skip("starts two PostgreSQL servers")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	sites := startSites(t, ctx, "a", "b")
	pgtest.ExecAll(t, pgtest.Connect(t, sites[0].pg.DSN()), `INSERT INTO items VALUES (1, 'from a')`)
	waitFor(t, ctx, sites[1], `SELECT coalesce((SELECT label FROM items WHERE id = 1), '')`, "from a")
	if st := sites[0].node.Status(); st.Capture.Captured < 1 || !st.Healthy || st.Site != "a" {
		t.Errorf("a's status: captured %d, healthy %v, site %q", st.Capture.Captured, st.Healthy, st.Site)
	}
	if st := sites[1].node.Status(); st.Origins["a"].Applied < 1 {
		t.Errorf("b's status: applied from a %+v, want at least 1", st.Origins["a"])
	}
}

func TestBeatDue(t *testing.T) {
	t0 := time.Date(2026, 12, 2, 20, 0, 0, 0, time.UTC)
	every := 10 * time.Second
	for _, c := range []struct {
		name              string
		now, last         time.Time
		informing, atLast uint64
		want              bool
	}{
		{"none since start", t0, time.Time{}, 0, 0, true},
		{"none since start, something applied", t0, time.Time{}, 5, 0, true},
		{"applied, but within the interval", t0.Add(9 * time.Second), t0, 3, 2, false},
		{"applied, the interval passed", t0.Add(10 * time.Second), t0, 3, 2, true},
		{"nothing applied (heartbeats only)", t0.Add(10 * time.Second), t0, 2, 2, false},
		{"nothing applied, almost quiet long", t0.Add(quietBeats*every - time.Second), t0, 2, 2, false},
		{"nothing applied, quiet long enough", t0.Add(quietBeats * every), t0, 2, 2, true},
	} {
		if got := beatDue(c.now, c.last, every, c.informing, c.atLast); got != c.want {
			t.Errorf("%s: beatDue = %v, want %v", c.name, got, c.want)
		}
	}
}
