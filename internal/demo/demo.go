// Package demo is `casualdb demo`: three throwaway PostgreSQL sites on
// this machine, each with an in-process sidecar (package node) on embedded
// defaults, writing and converging while the story is told.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/casualdb/casualdb/certs"
	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/casualdb/casualdb/node"
	"github.com/jackc/pgx/v5"
	"golang.org/x/sync/errgroup"
)

// demoSite is one site of the demo: a throwaway PostgreSQL and an
// in-process sidecar.
type demoSite struct {
	name string
	pg   *pgtest.Server
	sc   *node.Node
	nats int
}

// Run tells the demo's story to out, with the sites' files in dir and the
// sidecars' logs to log; a step waits at most timeout for the sites to
// converge.
func Run(ctx context.Context, out io.Writer, dir string, log *slog.Logger, timeout time.Duration) error {
	d := &demo{out: out, dir: dir, log: log, timeout: timeout}
	return d.run(ctx)
}

type demo struct {
	out     io.Writer
	dir     string
	log     *slog.Logger
	timeout time.Duration
	sites   []*demoSite
}

func (d *demo) say(format string, args ...any) { fmt.Fprintf(d.out, format+"\n", args...) }

func (d *demo) run(ctx context.Context) error {
	d.say("CasualDB demo: three PostgreSQL sites, every one accepting writes, converging.\n")
	defer d.stopServers()
	for _, name := range []string{"a", "b", "c"} {
		pg, err := pgtest.Start(ctx, pgtest.Options{Dir: d.dir, Name: "pg-" + name})
		if err != nil {
			return fmt.Errorf("demo: start postgres %s: %w", name, err)
		}
		port, err := pgtest.FreePort()
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		d.sites = append(d.sites, &demoSite{name: name, pg: pg, nats: port})
		d.say("  site %s: PostgreSQL 15 on 127.0.0.1:%d", name, pg.Port())
	}
	const schema = `CREATE TABLE accounts (id int PRIMARY KEY, owner text NOT NULL, balance int NOT NULL)`
	for _, s := range d.sites {
		if err := s.pg.Exec(ctx, schema); err != nil {
			return fmt.Errorf("demo: schema at %s: %w", s.name, err)
		}
	}
	d.say("  created table accounts at every site\n")

	runCtx, stop := context.WithCancel(ctx)
	g, gctx := errgroup.WithContext(runCtx)
	defer func() {
		stop()
		_ = g.Wait()
		for _, s := range d.sites {
			if s.sc != nil {
				s.sc.Close()
			}
		}
	}()
	// Mutual TLS between the sites, the way a user runs them: a
	// development CA and a certificate per site (casualdb certs).
	names := make([]string, len(d.sites))
	for i, s := range d.sites {
		names[i] = s.name
	}
	if err := certs.Generate(filepath.Join(d.dir, "certs"), names, nil); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	for _, s := range d.sites {
		if err := d.startSidecar(ctx, s); err != nil {
			return err
		}
		sc := s.sc
		g.Go(func() error { return sc.Run(gctx) })
	}
	d.say("Started a casualdb sidecar beside each, with an embedded NATS server; the sites speak mutual TLS\n(certificates from a development CA, as `casualdb certs` makes them).\n")

	d.say("1. Each site writes its own accounts:")
	for i, s := range d.sites {
		for j := 1; j <= 3; j++ {
			id := 3*i + j
			if err := d.exec(ctx, s, `INSERT INTO accounts VALUES ($1, $2, 100)`, id, fmt.Sprintf("%s-owner-%d", s.name, j)); err != nil {
				return err
			}
		}
		d.say("   site %s inserted accounts %d-%d", s.name, 3*i+1, 3*i+3)
	}
	if err := d.converge(ctx); err != nil {
		return err
	}

	d.say("\n2. All three sites update account 1 at the same moment (a true conflict):")
	var wg sync.WaitGroup
	errs := make([]error, len(d.sites))
	start := make(chan struct{})
	for i, s := range d.sites {
		wg.Add(1)
		go func(i int, s *demoSite) {
			defer wg.Done()
			<-start
			errs[i] = d.exec(ctx, s, `UPDATE accounts SET owner = $1, balance = balance + $2 WHERE id = 1`, "set-by-"+s.name, 10*(i+1))
		}(i, s)
	}
	close(start)
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	d.say("   a: owner=set-by-a balance+10   b: owner=set-by-b balance+20   c: owner=set-by-c balance+30")
	if err := d.converge(ctx); err != nil {
		return err
	}
	row, err := d.query(ctx, d.sites[0], `SELECT owner || ', balance ' || balance FROM accounts WHERE id = 1`)
	if err != nil {
		return err
	}
	d.say("   every site settled on the same winner (last writer by hybrid clock, then site name): %s", row)
	d.say("   (row-level last-writer-wins keeps one whole row; the losing images are in the conflict log)")

	d.say("\n3. Site b deletes account 2 while site c updates account 3 and site a inserts account 10:")
	if err := d.exec(ctx, d.sites[1], `DELETE FROM accounts WHERE id = 2`); err != nil {
		return err
	}
	if err := d.exec(ctx, d.sites[2], `UPDATE accounts SET balance = 0 WHERE id = 3`); err != nil {
		return err
	}
	if err := d.exec(ctx, d.sites[0], `INSERT INTO accounts VALUES (10, 'late-comer', 5)`); err != nil {
		return err
	}
	if err := d.converge(ctx); err != nil {
		return err
	}

	d.say("\nThe conflict log (casualdb.conflict_log), as site a recorded it:")
	rows, err := d.query(ctx, d.sites[0], `SELECT coalesce(string_agg(format('   %s key %s: %s won by rule %s', tbl, key, winner, rule), E'\n' ORDER BY id), '   (no concurrent writes were detected this time)') FROM casualdb.conflict_log`)
	if err != nil {
		return err
	}
	d.say("%s", rows)
	d.say("\nFinal accounts, identical at every site:")
	final, err := d.query(ctx, d.sites[0], `SELECT string_agg(format('   %s  %-14s %s', id, owner, balance), E'\n' ORDER BY id) FROM accounts`)
	if err != nil {
		return err
	}
	d.say("%s", final)
	d.say("\nConverged: all three sites hold the same rows. Cleaning up.")
	return nil
}

func (d *demo) startSidecar(ctx context.Context, s *demoSite) error {
	cfg := node.DefaultConfig()
	cfg.Site = s.name
	cfg.DataDir = filepath.Join(d.dir, "sidecar-"+s.name)
	cfg.Database.DSN = s.pg.DSN()
	cfg.NATS.Listen = fmt.Sprintf("127.0.0.1:%d", s.nats)
	cfg.Admin.Listen = ""
	f := certs.For(filepath.Join(d.dir, "certs"), s.name)
	cfg.NATS.TLS = node.NATSTLSConfig{Cert: f.Cert, Key: f.Key, CA: f.CA}
	for _, p := range d.sites {
		if p != s {
			cfg.Peers = append(cfg.Peers, node.PeerConfig{Name: p.name, NATSURL: fmt.Sprintf("tls://127.0.0.1:%d", p.nats)})
		}
	}
	sc, err := node.New(cfg, d.log)
	if err != nil {
		return fmt.Errorf("demo: sidecar %s: %w", s.name, err)
	}
	if err := sc.Start(ctx); err != nil {
		return fmt.Errorf("demo: start sidecar %s: %w", s.name, err)
	}
	s.sc = sc
	return nil
}

func (d *demo) stopServers() {
	for _, s := range d.sites {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = s.pg.Stop(ctx)
		cancel()
	}
}

func (d *demo) exec(ctx context.Context, s *demoSite, sql string, args ...any) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := s.pg.Exec(ctx, sql, args...); err != nil {
		return fmt.Errorf("demo: at site %s: %w", s.name, err)
	}
	return nil
}

func (d *demo) query(ctx context.Context, s *demoSite, sql string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, s.pg.DSN())
	if err != nil {
		return "", fmt.Errorf("demo: connect to %s: %w", s.name, err)
	}
	defer conn.Close(context.Background())
	var out string
	if err := conn.QueryRow(ctx, sql).Scan(&out); err != nil {
		return "", fmt.Errorf("demo: query at %s: %w", s.name, err)
	}
	return out, nil
}

// converge waits until every site holds the same accounts.
func (d *demo) converge(ctx context.Context) error {
	start := time.Now()
	deadline := start.Add(d.timeout)
	const sum = `SELECT count(*) || ' rows, checksum ' || coalesce(md5(string_agg(t::text, '|' ORDER BY id)), '-') FROM accounts t`
	for {
		var sums []string
		for _, s := range d.sites {
			v, err := d.query(ctx, s, sum)
			if err != nil {
				return err
			}
			sums = append(sums, v)
		}
		same := true
		for _, v := range sums[1:] {
			same = same && v == sums[0]
		}
		if same {
			d.say("   -> converged in %s: every site has %s", time.Since(start).Round(time.Millisecond), sums[0])
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("demo: sites did not converge within %s: %s", d.timeout, strings.Join(sums, " / "))
		}
		select {
		case <-time.After(50 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
