package meta

import (
	"context"
	"fmt"
	"time"

	"github.com/casualdb/casualdb"
)

// hintExpiryDDL holds what this site, as a hint holder, gave up: hints it
// kept for a site that was down and removed after cluster.hint_retention.
// One row per site, origin and origin outbox epoch, accumulated; written
// before the hints are removed, so nothing goes unrecorded. Not replicated.
var hintExpiryDDL = []string{
	`CREATE TABLE IF NOT EXISTS casualdb.hint_expiry (
		for_site        text        NOT NULL,
		origin          text        NOT NULL,
		epoch           text        NOT NULL,
		hints           bigint      NOT NULL,
		first_seq       bigint      NOT NULL,
		last_seq        bigint      NOT NULL,
		last_lsn        pg_lsn      NOT NULL,
		first_expired   timestamptz NOT NULL DEFAULT now(),
		last_expired    timestamptz NOT NULL DEFAULT now(),
		resolved_at     timestamptz,
		PRIMARY KEY (for_site, origin, epoch))`,
}

// HintExpiry is what a hint holder gave up for one site from one origin's
// outbox epoch: how many hints, and the sequences (and commit LSN) at the
// origin they reached. The site misses those transactions until it applies
// the origin up to LastSeq by another way (the origin's outbox, a repair).
type HintExpiry struct {
	For, Origin  casualdb.SiteID
	Epoch        string
	Hints        uint64
	FirstSeq     uint64
	LastSeq      uint64
	LastLSN      uint64
	FirstExpired time.Time
	LastExpired  time.Time
	// Resolved is when this site learned (by gossip) that For had applied
	// Origin up to LastSeq; zero while it has not.
	Resolved time.Time
}

// RecordHintExpiries adds es to casualdb.hint_expiry: counts add up,
// sequences widen, and a record resolved before is open again. Run it in
// one transaction, committed before the hints are removed.
func RecordHintExpiries(ctx context.Context, q Execer, es []HintExpiry) error {
	for _, e := range es {
		_, err := q.Exec(ctx, `
			INSERT INTO casualdb.hint_expiry (for_site, origin, epoch, hints, first_seq, last_seq, last_lsn)
			VALUES ($1, $2, $3, $4, $5, $6, $7::pg_lsn)
			ON CONFLICT (for_site, origin, epoch) DO UPDATE SET
				hints = hint_expiry.hints + excluded.hints,
				first_seq = least(hint_expiry.first_seq, excluded.first_seq),
				last_lsn = CASE WHEN excluded.last_seq >= hint_expiry.last_seq THEN excluded.last_lsn ELSE hint_expiry.last_lsn END,
				last_seq = greatest(hint_expiry.last_seq, excluded.last_seq),
				last_expired = now(),
				resolved_at = NULL`,
			string(e.For), string(e.Origin), e.Epoch, int64(e.Hints), int64(e.FirstSeq), int64(e.LastSeq), casualdb.FormatLSN(e.LastLSN))
		if err != nil {
			return fmt.Errorf("record expired hints for %s from %s: %w", e.For, e.Origin, err)
		}
	}
	return nil
}

// LoadHintExpiries returns every record, most recently expired first.
func LoadHintExpiries(ctx context.Context, q Querier) ([]HintExpiry, error) {
	rows, err := q.Query(ctx, `
		SELECT for_site, origin, epoch, hints, first_seq, last_seq, last_lsn::text, first_expired, last_expired,
			coalesce(resolved_at, 'epoch')
		FROM casualdb.hint_expiry ORDER BY last_expired DESC, for_site, origin, epoch`)
	if err != nil {
		return nil, fmt.Errorf("load hint expiries: %w", err)
	}
	defer rows.Close()
	var out []HintExpiry
	for rows.Next() {
		var (
			e                  HintExpiry
			forSite, origin    string
			hints, first, last int64
			lsn                string
		)
		if err := rows.Scan(&forSite, &origin, &e.Epoch, &hints, &first, &last, &lsn, &e.FirstExpired, &e.LastExpired, &e.Resolved); err != nil {
			return nil, fmt.Errorf("load hint expiries: %w", err)
		}
		e.For, e.Origin = casualdb.SiteID(forSite), casualdb.SiteID(origin)
		e.Hints, e.FirstSeq, e.LastSeq = uint64(hints), uint64(first), uint64(last)
		if e.LastLSN, err = casualdb.ParseLSN(lsn); err != nil {
			return nil, fmt.Errorf("load hint expiries: %w", err)
		}
		if e.Resolved.Equal(time.Unix(0, 0)) {
			e.Resolved = time.Time{}
		}
		out = append(out, e)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load hint expiries: %w", err)
	}
	return out, nil
}

// ResolveHintExpiry marks the open record of forSite, origin and epoch
// resolved if forSite has applied origin up to applied (in that epoch).
// It reports whether it did.
func ResolveHintExpiry(ctx context.Context, q Execer, forSite, origin casualdb.SiteID, epoch string, applied uint64) (bool, error) {
	tag, err := q.Exec(ctx, `
		UPDATE casualdb.hint_expiry SET resolved_at = now()
		WHERE for_site = $1 AND origin = $2 AND epoch = $3 AND last_seq <= $4 AND resolved_at IS NULL`,
		string(forSite), string(origin), epoch, int64(applied))
	if err != nil {
		return false, fmt.Errorf("resolve expired hints for %s from %s: %w", forSite, origin, err)
	}
	return tag.RowsAffected() > 0, nil
}

// ForgetHintExpiries removes the records resolved longer than resolved
// ago, and those last expired longer than open ago whatever their state
// (the site may never come back). It returns how many it removed.
func ForgetHintExpiries(ctx context.Context, q Execer, resolved, open time.Duration) (int64, error) {
	tag, err := q.Exec(ctx, `
		DELETE FROM casualdb.hint_expiry
		WHERE resolved_at < now() - make_interval(secs => $1) OR last_expired < now() - make_interval(secs => $2)`,
		resolved.Seconds(), open.Seconds())
	if err != nil {
		return 0, fmt.Errorf("forget hint expiries: %w", err)
	}
	return tag.RowsAffected(), nil
}
