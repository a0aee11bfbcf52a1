package meta

import (
	"context"
	"fmt"

	"github.com/casualdb/casualdb"
)

// durabilityDDL holds the site's W-durability watermark and the function
// clients call after COMMIT to wait for it (installed with the schema).
var durabilityDDL = []string{
	// One row: every local transaction with a commit LSN below durable_lsn
	// is held durably by at least w sites (this one included), or was not
	// replicated at all. Written by the sidecar; not replicated.
	//
	// Unlogged: saving the watermark writes no WAL. Logged, each save was
	// WAL that moved the position capture processes, which then called for
	// the next save: an idle site wrote ten tiny transactions a second. A
	// crash empties it; the sidecar saves it again at once, and a waiter
	// meanwhile only waits.
	`CREATE UNLOGGED TABLE IF NOT EXISTS casualdb.durability (
		site        text        PRIMARY KEY,
		w           int         NOT NULL,
		durable_lsn pg_lsn      NOT NULL,
		updated_at  timestamptz NOT NULL DEFAULT now())`,
	`ALTER TABLE casualdb.durability SET UNLOGGED`,
	// casualdb.wait_durable(timeout) returns once everything this site had
	// written when it was called (the caller's committed transactions among
	// it) is W-durable, or raises an error after timeout. It polls the
	// sidecar's watermark; it must not be called inside the transaction it
	// waits for (that one has not committed yet).
	`CREATE OR REPLACE FUNCTION casualdb.wait_durable(timeout interval DEFAULT '5 seconds') RETURNS pg_lsn
	LANGUAGE plpgsql AS $$
	DECLARE
		target   pg_lsn := pg_current_wal_insert_lsn();
		deadline timestamptz := clock_timestamp() + timeout;
		got      pg_lsn;
		need     int;
	BEGIN
		LOOP
			SELECT durable_lsn, w INTO got, need FROM casualdb.durability LIMIT 1;
			IF got IS NOT NULL AND got >= target THEN
				RETURN got;
			END IF;
			IF clock_timestamp() >= deadline THEN
				RAISE EXCEPTION 'casualdb: writes up to % are not held by % sites after % (durable up to %)',
					target, coalesce(need, 0), timeout, coalesce(got::text, 'nothing: is the sidecar running with cluster.w?')
					USING ERRCODE = '57014', HINT = 'the transaction is committed here and will replicate; it is not yet W-durable';
			END IF;
			PERFORM pg_sleep(0.005);
		END LOOP;
	END $$`,
}

// SaveDurability records site's W-durability watermark.
func SaveDurability(ctx context.Context, q Execer, site casualdb.SiteID, w int, lsn uint64) error {
	_, err := q.Exec(ctx, `
		INSERT INTO casualdb.durability (site, w, durable_lsn, updated_at) VALUES ($1, $2, $3::pg_lsn, now())
		ON CONFLICT (site) DO UPDATE SET w = excluded.w, durable_lsn = excluded.durable_lsn, updated_at = excluded.updated_at`,
		string(site), w, casualdb.FormatLSN(lsn))
	if err != nil {
		return fmt.Errorf("save durability watermark: %w", err)
	}
	return nil
}
