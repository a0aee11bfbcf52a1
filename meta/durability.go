package meta

import (
	"context"
	"fmt"
	"math"

	"github.com/casualdb/casualdb"
)

// durabilityDDL holds the site's W-durability watermark and the function
// clients call after COMMIT to wait for it (installed with the schema).
var durabilityDDL = []string{
	// One row: the site and its W. The watermark itself, durable_lsn (the
	// LSN below which every local transaction's commit is held durably by
	// at least w sites, this one included, or was not replicated at all),
	// is the value of the unlogged sequence casualdb.durable_lsn, which
	// setval moves without a transaction id and without WAL. Saved in the
	// table (unlogged too), each save was a transaction whose commit
	// record moved the WAL position capture processes, which then called
	// for the next save: an idle site committed ten transactions a second
	// (380 bytes of WAL, and the walsender and capture woken each time).
	// The column durable_lsn holds the watermark when the row was written
	// (at the sidecar's start). A crash resets the sequence to 0; the
	// sidecar saves it again at once, and a waiter meanwhile only waits.
	`CREATE UNLOGGED TABLE IF NOT EXISTS casualdb.durability (
		site        text        PRIMARY KEY,
		w           int         NOT NULL,
		durable_lsn pg_lsn      NOT NULL,
		updated_at  timestamptz NOT NULL DEFAULT now())`,
	`ALTER TABLE casualdb.durability SET UNLOGGED`,
	`CREATE UNLOGGED SEQUENCE IF NOT EXISTS casualdb.durable_lsn AS bigint MINVALUE 0 START 0`,
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
			SELECT CASE WHEN last_value > 0 THEN '0/0'::pg_lsn + last_value END INTO got FROM casualdb.durable_lsn;
			IF got IS NOT NULL AND got >= target THEN
				RETURN got;
			END IF;
			IF clock_timestamp() >= deadline THEN
				SELECT w INTO need FROM casualdb.durability LIMIT 1;
				RAISE EXCEPTION 'casualdb: writes up to % are not held by % sites after % (durable up to %)',
					target, coalesce(need, 0), timeout, coalesce(got::text, 'nothing: is the sidecar running with cluster.w?')
					USING ERRCODE = '57014', HINT = 'the transaction is committed here and will replicate; it is not yet W-durable';
			END IF;
			PERFORM pg_sleep(0.005);
		END LOOP;
	END $$`,
}

// SaveDurability records site's W-durability watermark: the site and w in
// casualdb.durability (when the sidecar starts, or w changes), the LSN in
// casualdb.durable_lsn.
func SaveDurability(ctx context.Context, q Execer, site casualdb.SiteID, w int, lsn uint64) error {
	_, err := q.Exec(ctx, `
		INSERT INTO casualdb.durability (site, w, durable_lsn, updated_at) VALUES ($1, $2, $3::pg_lsn, now())
		ON CONFLICT (site) DO UPDATE SET w = excluded.w, durable_lsn = excluded.durable_lsn, updated_at = excluded.updated_at`,
		string(site), w, casualdb.FormatLSN(lsn))
	if err != nil {
		return fmt.Errorf("save durability watermark: %w", err)
	}
	return SaveDurableLSN(ctx, q, lsn)
}

// SaveDurableLSN moves the W-durability watermark to lsn. It assigns no
// transaction id and writes no WAL (an unlogged sequence).
func SaveDurableLSN(ctx context.Context, q Execer, lsn uint64) error {
	if lsn > math.MaxInt64 {
		return fmt.Errorf("save durability watermark: LSN %s out of range", casualdb.FormatLSN(lsn))
	}
	if _, err := q.Exec(ctx, `SELECT setval('casualdb.durable_lsn', $1)`, int64(lsn)); err != nil {
		return fmt.Errorf("save durability watermark: %w", err)
	}
	return nil
}
