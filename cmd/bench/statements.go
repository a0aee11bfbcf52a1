package main

import (
	"context"
	"fmt"
	"maps"
)

// With -statements N, every server preloads pg_stat_statements and the
// throttled run reports each site's N most expensive statements: where the
// databases' share of the replication cost goes.

// withStatements returns settings that also preload pg_stat_statements.
func withStatements(settings map[string]string) map[string]string {
	out := maps.Clone(settings)
	if out == nil {
		out = map[string]string{}
	}
	if lib := out["shared_preload_libraries"]; lib != "" {
		out["shared_preload_libraries"] = lib + ",pg_stat_statements"
	} else {
		out["shared_preload_libraries"] = "pg_stat_statements"
	}
	return out
}

// resetStatements starts counting afresh at every server.
func (c *cluster) resetStatements(ctx context.Context) error {
	for i, s := range c.servers {
		if err := s.Exec(ctx, `CREATE EXTENSION IF NOT EXISTS pg_stat_statements; SELECT pg_stat_statements_reset()`); err != nil {
			return fmt.Errorf("reset pg_stat_statements at site %s: %w", siteName(i), err)
		}
	}
	return nil
}

// topStatements returns, per site, its n statements with the most execution
// time since resetStatements.
func (c *cluster) topStatements(ctx context.Context, n int) ([]string, error) {
	var out []string
	for i, conn := range c.conns {
		qctx, cancel := context.WithTimeout(ctx, queryTimeout)
		rows, err := conn.Query(qctx, `SELECT calls, total_exec_time, rows, left(regexp_replace(query, '\s+', ' ', 'g'), 100)
			FROM pg_stat_statements ORDER BY total_exec_time DESC LIMIT $1`, n)
		if err != nil {
			cancel()
			return nil, fmt.Errorf("statements at site %s: %w", siteName(i), err)
		}
		out = append(out, fmt.Sprintf("site %s:  calls  total ms  rows  statement", siteName(i)))
		for rows.Next() {
			var calls, nrows int64
			var ms float64
			var q string
			if err := rows.Scan(&calls, &ms, &nrows, &q); err != nil {
				rows.Close()
				cancel()
				return nil, fmt.Errorf("statements at site %s: %w", siteName(i), err)
			}
			out = append(out, fmt.Sprintf("  %8d %9.0f %7d  %s", calls, ms, nrows, q))
		}
		err = rows.Err()
		rows.Close()
		cancel()
		if err != nil {
			return nil, fmt.Errorf("statements at site %s: %w", siteName(i), err)
		}
	}
	return out, nil
}
