package meta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/jackc/pgx/v5"
)

// Progress is what a site has applied from one origin.
type Progress struct {
	Seq        uint64    // last applied outbox sequence of the origin
	LSN        uint64    // its commit LSN at the origin
	CommitTime time.Time // its commit time at the origin
	AppliedAt  time.Time // when it was applied here
	Epoch      string    // incarnation of the origin's outbox the Seq belongs to
	// Deps are the dependencies of that transaction (casualdb.Tx.Deps).
	Deps map[casualdb.SiteID]uint64
}

// LoadProgress returns the progress applied from every origin.
func LoadProgress(ctx context.Context, q Querier) (map[casualdb.SiteID]Progress, error) {
	rows, err := q.Query(ctx, `SELECT origin, seq, lsn::text, coalesce(commit_time, 'epoch'), applied_at, epoch FROM casualdb.progress`)
	if err != nil {
		return nil, fmt.Errorf("load progress: %w", err)
	}
	defer rows.Close()
	out := map[casualdb.SiteID]Progress{}
	for rows.Next() {
		var (
			origin, lsn string
			seq         int64
			p           Progress
		)
		if err := rows.Scan(&origin, &seq, &lsn, &p.CommitTime, &p.AppliedAt, &p.Epoch); err != nil {
			return nil, fmt.Errorf("load progress: %w", err)
		}
		p.Seq = uint64(seq)
		if p.LSN, err = casualdb.ParseLSN(lsn); err != nil {
			return nil, fmt.Errorf("load progress of %s: %w", origin, err)
		}
		out[casualdb.SiteID(origin)] = p
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("load progress: %w", err)
	}
	return out, nil
}

// SaveProgress records p as applied from origin; call it in the apply transaction.
func SaveProgress(ctx context.Context, q Execer, origin casualdb.SiteID, p Progress) error {
	_, err := q.Exec(ctx, `
		INSERT INTO casualdb.progress (origin, seq, lsn, commit_time, applied_at, epoch, deps) VALUES ($1, $2, $3::pg_lsn, $4, now(), $5, $6::jsonb)
		ON CONFLICT (origin) DO UPDATE SET seq = excluded.seq, lsn = excluded.lsn, commit_time = excluded.commit_time, applied_at = now(),
			epoch = excluded.epoch, deps = excluded.deps`,
		string(origin), int64(p.Seq), casualdb.FormatLSN(p.LSN), p.CommitTime, p.Epoch, depsJSON(p.Deps))
	if err != nil {
		return fmt.Errorf("save progress of %s: %w", origin, err)
	}
	return nil
}

// CaptureState is capture's high-water mark: the outbox sequence of the
// last transaction whose version metadata is recorded, its commit LSN, and
// the outbox message that holds it.
type CaptureState struct {
	OutboxSeq uint64
	LSN       uint64
	OutboxMsg uint64 // 0 when recorded by an earlier version
}

// LoadCaptureState returns the capture state of site (zero if none).
func LoadCaptureState(ctx context.Context, q Querier, site casualdb.SiteID) (CaptureState, error) {
	var (
		seq, msg int64
		lsn      string
	)
	err := q.QueryRow(ctx, `SELECT outbox_seq, lsn::text, outbox_msg FROM casualdb.capture_state WHERE site = $1`, string(site)).Scan(&seq, &lsn, &msg)
	if errors.Is(err, pgx.ErrNoRows) {
		return CaptureState{}, nil
	}
	if err != nil {
		return CaptureState{}, fmt.Errorf("load capture state: %w", err)
	}
	l, err := casualdb.ParseLSN(lsn)
	if err != nil {
		return CaptureState{}, fmt.Errorf("load capture state: %w", err)
	}
	return CaptureState{OutboxSeq: uint64(seq), LSN: l, OutboxMsg: uint64(msg)}, nil
}

// SaveCaptureState records st for site.
func SaveCaptureState(ctx context.Context, q Execer, site casualdb.SiteID, st CaptureState) error {
	_, err := q.Exec(ctx, `
		INSERT INTO casualdb.capture_state (site, outbox_seq, lsn, outbox_msg) VALUES ($1, $2, $3::pg_lsn, $4)
		ON CONFLICT (site) DO UPDATE SET outbox_seq = excluded.outbox_seq, lsn = excluded.lsn, outbox_msg = excluded.outbox_msg, updated_at = now()`,
		string(site), int64(st.OutboxSeq), casualdb.FormatLSN(st.LSN), int64(st.OutboxMsg))
	if err != nil {
		return fmt.Errorf("save capture state: %w", err)
	}
	return nil
}

// depsJSON renders deps for casualdb.progress.deps: {"site": lsn, ...}.
func depsJSON(deps map[casualdb.SiteID]uint64) string {
	if len(deps) == 0 {
		return "{}"
	}
	b, _ := json.Marshal(deps)
	return string(b)
}

// HeartbeatName is the replicated table of the sites' heartbeats (Beat), in
// Schema; HeartbeatTable is its CasualDB name.
const HeartbeatName = "heartbeat"

var HeartbeatTable = casualdb.TableName(Schema, HeartbeatName)

// OnlyHeartbeat reports whether tx changes nothing but heartbeat rows: a
// transaction that tells what its origin had applied, and nothing more.
func OnlyHeartbeat(tx *casualdb.Tx) bool {
	for _, ch := range tx.Changes {
		if ch.Table != HeartbeatTable {
			return false
		}
	}
	return len(tx.Changes) > 0
}

// Informing counts the transactions of txs that change more than heartbeat
// rows (OnlyHeartbeat): each one may change what its site's next heartbeat
// tells (what it applied, its newest sequence). Apply and capture count
// them for the heartbeat's schedule.
func Informing(txs ...*casualdb.Tx) uint64 {
	var n uint64
	for _, tx := range txs {
		if !OnlyHeartbeat(tx) {
			n++
		}
	}
	return n
}

// Beat advances site's heartbeat row.
func Beat(ctx context.Context, q Execer, site casualdb.SiteID) error {
	_, err := q.Exec(ctx, `INSERT INTO casualdb.heartbeat (site, beat, at) VALUES ($1, 1, now())
		ON CONFLICT (site) DO UPDATE SET beat = heartbeat.beat + 1, at = now()`, string(site))
	if err != nil {
		return fmt.Errorf("heartbeat: %w", err)
	}
	return nil
}

// CollectTombstones removes the version metadata of deleted rows that every
// site has seen, and returns how many it removed. A tombstone written by a
// transaction of origin O at commit LSN L is stable here when, for every
// site X of sites other than O and self, the last transaction of X applied
// here says X had applied O up to L: then X has seen the delete, and every
// write X made before seeing it (the only ones that could still need the
// tombstone) committed before that transaction of X, so it is applied here
// already. self has seen it: the tombstone is here.
//
// Every delete merged into the row's floor must be stable, not only the one
// recorded (row_version.floor_lsns names them): a write that did not see
// one of them could still arrive, and a site that had removed the row would
// take it as the first write of a new row while a site that kept it finds
// it dead. Rows recorded before floor_lsns was kept are checked by the
// recorded delete alone, as before.
//
// What the removed tombstones knew is kept: the same statement raises their
// tables' collected floors (see LoadFloors), from which capture starts the
// clock of a row written again here.
func CollectTombstones(ctx context.Context, q Querier, sites []casualdb.SiteID, self casualdb.SiteID) (int64, error) {
	names := make([]string, len(sites))
	for i, s := range sites {
		names[i] = string(s)
	}
	var n, raised int64
	err := q.QueryRow(ctx, fmt.Sprintf(collectSQL, `
		v.deleted AND v.origin_lsn IS NOT NULL
		  AND NOT EXISTS (
			SELECT 1 FROM unnest($1::text[]) AS x(site)
			CROSS JOIN LATERAL (
				SELECT v.origin AS o, v.origin_lsn::numeric AS l
				UNION ALL SELECT key, value::numeric FROM jsonb_each_text(coalesce(v.floor_lsns, '{}'::jsonb))) d
			WHERE x.site <> d.o AND x.site <> $2
			  AND coalesce((SELECT (p.deps->>d.o)::numeric FROM casualdb.progress p WHERE p.origin = x.site), 0) < d.l)`),
		names, string(self)).Scan(&n, &raised)
	if err != nil {
		return 0, fmt.Errorf("collect tombstones: %w", err)
	}
	return n, nil
}
