package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/casualdb/casualdb/internal/pgtest"
	"github.com/jackc/pgx/v5"
)

const (
	// waitTimeout bounds every wait for convergence or idleness.
	waitTimeout = 5 * time.Minute
	// pollEvery is how often a wait for convergence looks for its marker
	// (one row read by its key); the digests, which read the tables whole,
	// are compared once the marker is there, and every digestEvery until
	// they match. Reading the digests every few milliseconds cost a busy
	// site a fifth of a core, taken from the replication it measured.
	pollEvery   = 5 * time.Millisecond
	digestEvery = 100 * time.Millisecond
	// queryTimeout bounds one query of the bench's own.
	queryTimeout = 10 * time.Second
	// benchApp is the application_name of every connection the bench opens,
	// so that the CPU accounting can tell them from the replicator's.
	benchApp = "bench"
)

// schema is created at every site before anything runs. bench_arrival
// records when each probe arrived; its trigger fires for replicated rows too
// (ENABLE ALWAYS), so that lag = arrived - sent at every peer.
const schema = `
CREATE TABLE bench_kv (k int PRIMARY KEY, v int NOT NULL, t timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE bench_acct (id int PRIMARY KEY, balance numeric(14,2) NOT NULL DEFAULT 0, note text, t timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE TABLE bench_probe (id bigint PRIMARY KEY, sent timestamptz NOT NULL);
CREATE TABLE bench_arrival (id bigint NOT NULL, arrived timestamptz NOT NULL);
CREATE FUNCTION bench_arrive() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN INSERT INTO bench_arrival VALUES (NEW.id, clock_timestamp()); RETURN NEW; END $$;
CREATE TRIGGER bench_arrive AFTER INSERT ON bench_probe FOR EACH ROW EXECUTE FUNCTION bench_arrive();
ALTER TABLE bench_probe ENABLE ALWAYS TRIGGER bench_arrive;
`

// replicatedTables are the tables both systems replicate.
var replicatedTables = []string{"bench_kv", "bench_acct", "bench_probe"}

// siteName names the i-th site: a, b, c, ...
func siteName(i int) string { return string(rune('a' + i)) }

// cluster is one PostgreSQL server per site, with a connection of the
// bench's own to each. The connections are used by one goroutine at a time
// (the one running the scenarios); the prober has its own.
type cluster struct {
	dir     string
	servers []*pgtest.Server
	conns   []*pgx.Conn
	marks   int64 // markers written at site a (see mark)
}

// benchDSN is s's DSN with the bench's application_name.
func benchDSN(s *pgtest.Server) string { return s.DSN() + "&application_name=" + benchApp }

// startCluster starts n servers with settings under dir and creates the
// schema in each.
func startCluster(ctx context.Context, dir string, n int, settings map[string]string) (*cluster, error) {
	c := &cluster{dir: dir}
	for i := range n {
		s, err := pgtest.Start(ctx, pgtest.Options{Dir: dir, Name: siteName(i), Settings: settings})
		if err != nil {
			c.stop()
			return nil, fmt.Errorf("start postgres %s: %w", siteName(i), err)
		}
		c.servers = append(c.servers, s)
		cctx, cancel := context.WithTimeout(ctx, queryTimeout)
		conn, err := pgx.Connect(cctx, benchDSN(s))
		cancel()
		if err != nil {
			c.stop()
			return nil, fmt.Errorf("connect to site %s: %w", siteName(i), err)
		}
		c.conns = append(c.conns, conn)
		if err := c.exec(ctx, i, queryTimeout, schema); err != nil {
			c.stop()
			return nil, fmt.Errorf("create schema: %w", err)
		}
	}
	return c, nil
}

// exec runs sql at site i on the bench's connection within timeout.
func (c *cluster) exec(ctx context.Context, i int, timeout time.Duration, sql string, args ...any) error {
	qctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if _, err := c.conns[i].Exec(qctx, sql, args...); err != nil {
		return fmt.Errorf("exec at site %s: %w", siteName(i), err)
	}
	return nil
}

// settle vacuums and checkpoints every server, so that the autovacuum and
// checkpoint the earlier runs left due do not land in the next one.
func (c *cluster) settle(ctx context.Context) error {
	for i := range c.servers {
		if err := c.exec(ctx, i, waitTimeout, `VACUUM`); err != nil {
			return fmt.Errorf("vacuum: %w", err)
		}
		if err := c.exec(ctx, i, waitTimeout, `CHECKPOINT`); err != nil {
			return fmt.Errorf("checkpoint: %w", err)
		}
	}
	return nil
}

// truncate empties the bench's tables at site i.
func (c *cluster) truncate(ctx context.Context, i int) error {
	return c.exec(ctx, i, time.Minute, `TRUNCATE bench_kv, bench_acct, bench_probe, bench_arrival`)
}

// stop closes the bench's connections and stops every server.
func (c *cluster) stop() {
	for _, conn := range c.conns {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = conn.Close(ctx)
		cancel()
	}
	c.conns = nil
	for _, s := range c.servers {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		_ = s.Stop(ctx)
		cancel()
	}
}

// pids returns every postmaster's process id, by site.
func (c *cluster) pids() []int {
	out := make([]int, len(c.servers))
	for i, s := range c.servers {
		out[i] = s.PID()
	}
	return out
}

// digest sums up what a site holds of the replicated tables: equal digests
// mean the site has applied the same transactions (pgbench only increments).
type digest struct {
	kvCount, kvSum int64
	acctCount      int64
	acctSum        string // numeric, as text
	probes         int64
}

func (d digest) String() string {
	return fmt.Sprintf("kv %d/%d acct %d/%s probes %d", d.kvCount, d.kvSum, d.acctCount, d.acctSum, d.probes)
}

// sameData reports whether d and e agree on the tables pgbench writes,
// whatever the probes.
func (d digest) sameData(e digest) bool {
	return d.kvCount == e.kvCount && d.kvSum == e.kvSum && d.acctCount == e.acctCount && d.acctSum == e.acctSum
}

// same reports whether d and e agree on every replicated table.
func (d digest) same(e digest) bool { return d.sameData(e) && d.probes == e.probes }

// digest reads site i's digest.
func (c *cluster) digest(ctx context.Context, i int) (digest, error) {
	qctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	var d digest
	err := c.conns[i].QueryRow(qctx, `SELECT
		(SELECT count(*) FROM bench_kv), (SELECT coalesce(sum(v), 0) FROM bench_kv),
		(SELECT count(*) FROM bench_acct), (SELECT coalesce(sum(balance), 0)::text FROM bench_acct),
		(SELECT count(*) FROM bench_probe)`).Scan(&d.kvCount, &d.kvSum, &d.acctCount, &d.acctSum, &d.probes)
	if err != nil {
		return d, fmt.Errorf("read digest at site %s: %w", siteName(i), err)
	}
	return d, nil
}

// errNotConverged reports a wait for convergence that timed out.
var errNotConverged = errors.New("did not converge")

// mark inserts a marker row into bench_probe at site a (a negative id, which
// no probe uses) and returns its id. Both systems apply site a's
// transactions in its commit order, so a site that holds the marker holds
// everything a committed before it.
func (c *cluster) mark(ctx context.Context) (int64, error) {
	c.marks++
	id := -c.marks
	if err := c.exec(ctx, 0, queryTimeout, `INSERT INTO bench_probe VALUES ($1, clock_timestamp())`, id); err != nil {
		return 0, fmt.Errorf("write marker: %w", err)
	}
	return id, nil
}

// hasMarker tells whether site i holds marker id.
func (c *cluster) hasMarker(ctx context.Context, i int, id int64) (bool, error) {
	qctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	var ok bool
	if err := c.conns[i].QueryRow(qctx, `SELECT EXISTS (SELECT 1 FROM bench_probe WHERE id = $1)`, id).Scan(&ok); err != nil {
		return false, fmt.Errorf("look for marker at site %s: %w", siteName(i), err)
	}
	return ok, nil
}

// waitDigest waits until each of the given sites holds marker (polled
// every pollEvery) and then its digest matches want (only the pgbench
// tables when dataOnly), for at most waitTimeout.
func (c *cluster) waitDigest(ctx context.Context, want digest, marker int64, sites []int, dataOnly bool) error {
	deadline := time.Now().Add(waitTimeout)
	for _, i := range sites {
		err := pollUntil(ctx, deadline, pollEvery, func() (bool, string, error) {
			ok, err := c.hasMarker(ctx, i, marker)
			return ok, fmt.Sprintf("marker %d missing", marker), err
		})
		if err == nil {
			err = pollUntil(ctx, deadline, digestEvery, func() (bool, string, error) {
				got, err := c.digest(ctx, i)
				return got.same(want) || dataOnly && got.sameData(want), fmt.Sprintf("has %s, site a %s", got, want), err
			})
		}
		if err != nil {
			return fmt.Errorf("wait for site %s: %w", siteName(i), err)
		}
	}
	return nil
}

// pollUntil calls f every interval until it reports done, fails, or the
// deadline passes (errNotConverged, with f's last description of what it
// still lacks).
func pollUntil(ctx context.Context, deadline time.Time, every time.Duration, f func() (done bool, lacking string, err error)) error {
	for {
		done, lacking, err := f()
		if err != nil || done {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w within %s: %s", errNotConverged, waitTimeout, lacking)
		}
		if err := sleep(ctx, every); err != nil {
			return err
		}
	}
}

// peers lists every site but a.
func (c *cluster) peers() []int {
	out := make([]int, 0, len(c.servers)-1)
	for i := 1; i < len(c.servers); i++ {
		out = append(out, i)
	}
	return out
}

// converge waits until every peer holds what site a holds.
func (c *cluster) converge(ctx context.Context) error {
	marker, err := c.mark(ctx)
	if err != nil {
		return err
	}
	want, err := c.digest(ctx, 0)
	if err != nil {
		return err
	}
	return c.waitDigest(ctx, want, marker, c.peers(), false)
}

// backend is one row of pg_stat_activity.
type backend struct {
	pid         int
	backendType string
	appName     string
}

// activity reads pg_stat_activity at site i.
func (c *cluster) activity(ctx context.Context, i int) ([]backend, error) {
	qctx, cancel := context.WithTimeout(ctx, queryTimeout)
	defer cancel()
	rows, err := c.conns[i].Query(qctx, `SELECT pid, coalesce(backend_type, ''), coalesce(application_name, '') FROM pg_stat_activity`)
	if err != nil {
		return nil, fmt.Errorf("read pg_stat_activity at site %s: %w", siteName(i), err)
	}
	defer rows.Close()
	var out []backend
	for rows.Next() {
		var b backend
		if err := rows.Scan(&b.pid, &b.backendType, &b.appName); err != nil {
			return nil, fmt.Errorf("read pg_stat_activity at site %s: %w", siteName(i), err)
		}
		out = append(out, b)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read pg_stat_activity at site %s: %w", siteName(i), err)
	}
	return out, nil
}
