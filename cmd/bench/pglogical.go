package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"time"
)

// pglogicalControl is installed with postgresql-15-pglogical.
const pglogicalControl = "/usr/share/postgresql/15/extension/pglogical.control"

// errNotInstalled reports that pglogical is missing.
var errNotInstalled = errors.New("pglogical is not installed (apt-get install postgresql-15-pglogical)")

// pglogicalSettings are the PostgreSQL settings pglogical's sites start with.
var pglogicalSettings = map[string]string{
	"shared_preload_libraries": "pglogical",
	"track_commit_timestamp":   "on",
}

// pglogicalInstalled reports whether the extension is there.
func pglogicalInstalled() error {
	if _, err := os.Stat(pglogicalControl); err != nil {
		return fmt.Errorf("%w: %w", errNotInstalled, err)
	}
	return nil
}

// pglogicalSystem is a full mesh of pglogical subscriptions: every site
// subscribes to every other one, and forwards nothing it did not originate
// (forward_origins '{}'), as casualdb's peers do.
type pglogicalSystem struct {
	c *cluster
}

// startPglogical makes every site a pglogical node replicating the bench's
// tables, subscribes each to every other, and waits until every
// subscription replicates.
func startPglogical(ctx context.Context, c *cluster) (*pglogicalSystem, error) {
	var add strings.Builder
	for _, t := range replicatedTables {
		fmt.Fprintf(&add, "SELECT pglogical.replication_set_add_table('default', '%s');\n", t)
	}
	for i, s := range c.servers {
		err := c.exec(ctx, i, time.Minute, fmt.Sprintf(`CREATE EXTENSION pglogical;
			SELECT pglogical.create_node(node_name := '%s', dsn := 'host=127.0.0.1 port=%d dbname=postgres user=postgres');
			%s`, siteName(i), s.Port(), add.String()))
		if err != nil {
			return nil, fmt.Errorf("set up pglogical node %s: %w", siteName(i), err)
		}
	}
	for i := range c.servers {
		for j, p := range c.servers {
			if i == j {
				continue
			}
			err := c.exec(ctx, i, time.Minute, fmt.Sprintf(`SELECT pglogical.create_subscription(subscription_name := '%s',
				provider_dsn := 'host=127.0.0.1 port=%d dbname=postgres user=postgres', replication_sets := ARRAY['default'],
				forward_origins := '{}', synchronize_data := false, synchronize_structure := false)`, subscription(i, j), p.Port()))
			if err != nil {
				return nil, fmt.Errorf("subscribe %s to %s: %w", siteName(i), siteName(j), err)
			}
		}
	}
	s := &pglogicalSystem{c: c}
	if err := s.waitReplicating(ctx, 2*time.Minute); err != nil {
		return nil, err
	}
	return s, nil
}

// subscription names site i's subscription to site j: b_from_a.
func subscription(i, j int) string { return siteName(i) + "_from_" + siteName(j) }

// waitReplicating waits until every subscription at every site replicates.
func (s *pglogicalSystem) waitReplicating(ctx context.Context, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for i := range s.c.servers {
		for {
			var n int
			qctx, cancel := context.WithTimeout(ctx, queryTimeout)
			err := s.c.conns[i].QueryRow(qctx, `SELECT count(*) FROM pglogical.show_subscription_status() WHERE status <> 'replicating'`).Scan(&n)
			cancel()
			if err != nil {
				return fmt.Errorf("read subscription status at site %s: %w", siteName(i), err)
			}
			if n == 0 {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("wait for subscriptions at site %s: %d not replicating after %s", siteName(i), n, timeout)
			}
			if err := sleep(ctx, 100*time.Millisecond); err != nil {
				return err
			}
		}
	}
	return nil
}

// sidecarPIDs is empty: pglogical runs inside PostgreSQL.
func (s *pglogicalSystem) sidecarPIDs() []int { return nil }

// pause disables site i's subscription to site a at once: its apply worker
// exits, and a's changes wait in a's slot.
func (s *pglogicalSystem) pause(ctx context.Context, i int) error {
	err := s.c.exec(ctx, i, time.Minute, `SELECT pglogical.alter_subscription_disable($1, immediate := true)`, subscription(i, 0))
	if err != nil {
		return fmt.Errorf("disable subscription %s: %w", subscription(i, 0), err)
	}
	return nil
}

// resume enables site i's subscription to site a again.
func (s *pglogicalSystem) resume(ctx context.Context, i int) error {
	err := s.c.exec(ctx, i, time.Minute, `SELECT pglogical.alter_subscription_enable($1, immediate := true)`, subscription(i, 0))
	if err != nil {
		return fmt.Errorf("enable subscription %s: %w", subscription(i, 0), err)
	}
	return nil
}

// idle has nothing more to wait for once the sites have converged:
// pglogical exposes no progress mark like casualdb's processed_lsn.
func (s *pglogicalSystem) idle(context.Context) error { return nil }

// observe has no stages to report: pglogical has no delay histograms.
func (s *pglogicalSystem) observe(context.Context, string, int) func() stages {
	return func() stages { return stages{} }
}

// close has nothing to stop: the servers hold every pglogical process.
func (s *pglogicalSystem) close() {}
