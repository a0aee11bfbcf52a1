package meta

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/casualdb/casualdb"
)

// Parked is a change, or a whole message, that could not be applied. It
// keeps everything needed to replay it.
type Parked struct {
	ID       int64
	ParkedAt time.Time
	Origin   casualdb.SiteID
	Seq      uint64
	LSN      uint64
	Table    string
	Key      string
	Reason   string
	Payload  []byte // the change (JSON) or the raw message
}

// Park records p.
func Park(ctx context.Context, q Querier, p Parked) error {
	var lsn *string
	if p.LSN != 0 {
		s := casualdb.FormatLSN(p.LSN)
		lsn = &s
	}
	_, err := q.Exec(ctx, `INSERT INTO casualdb.parked (origin, seq, lsn, tbl, key, reason, payload) VALUES ($1, $2, $3::pg_lsn, $4, $5, $6, $7)`,
		string(p.Origin), int64(p.Seq), lsn, p.Table, p.Key, p.Reason, p.Payload)
	if err != nil {
		return fmt.Errorf("park change of %s %s: %w", p.Table, p.Key, err)
	}
	return nil
}

// ListParked returns up to limit parked entries, oldest first.
func ListParked(ctx context.Context, q Querier, limit int) ([]Parked, error) {
	rows, err := q.Query(ctx, `SELECT id, parked_at, coalesce(origin,''), coalesce(seq,0), coalesce(lsn::text,'0/0'), coalesce(tbl,''), coalesce(key,''), reason, coalesce(payload, ''::bytea)
		FROM casualdb.parked ORDER BY id LIMIT $1`, limit)
	if err != nil {
		return nil, fmt.Errorf("list parked: %w", err)
	}
	defer rows.Close()
	var out []Parked
	for rows.Next() {
		var (
			p      Parked
			origin string
			seq    int64
			lsn    string
		)
		if err := rows.Scan(&p.ID, &p.ParkedAt, &origin, &seq, &lsn, &p.Table, &p.Key, &p.Reason, &p.Payload); err != nil {
			return nil, fmt.Errorf("list parked: %w", err)
		}
		p.Origin, p.Seq = casualdb.SiteID(origin), uint64(seq)
		p.LSN, _ = casualdb.ParseLSN(lsn)
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list parked: %w", err)
	}
	return out, nil
}

// Conflict is one true conflict between concurrent versions of a row.
type Conflict struct {
	Table         string
	Key           string
	Rule          string // the rule that chose the winner
	Winner        string // "local" or "remote"
	LocalVersion  casualdb.Version
	RemoteVersion casualdb.Version
	LocalRow      json.RawMessage // null when the row was absent (deleted) here
	RemoteRow     json.RawMessage // null for a remote delete
}

// LogConflict records c.
func LogConflict(ctx context.Context, q Querier, c Conflict) error {
	lv, err := json.Marshal(c.LocalVersion)
	if err != nil {
		return fmt.Errorf("log conflict: %w", err)
	}
	rv, err := json.Marshal(c.RemoteVersion)
	if err != nil {
		return fmt.Errorf("log conflict: %w", err)
	}
	_, err = q.Exec(ctx, `INSERT INTO casualdb.conflict_log (tbl, key, rule, winner, local_version, remote_version, local_row, remote_row)
		VALUES ($1, $2, $3, $4, $5::jsonb, $6::jsonb, $7::jsonb, $8::jsonb)`,
		c.Table, c.Key, c.Rule, c.Winner, string(lv), string(rv), nullJSON(c.LocalRow), nullJSON(c.RemoteRow))
	if err != nil {
		return fmt.Errorf("log conflict on %s %s: %w", c.Table, c.Key, err)
	}
	return nil
}

func nullJSON(b json.RawMessage) *string {
	if len(b) == 0 {
		return nil
	}
	s := string(b)
	return &s
}

// TrimConflictLog removes the conflicts logged more than keep ago, and
// returns how many it removed: the log is bounded by age.
func TrimConflictLog(ctx context.Context, q Execer, keep time.Duration) (int64, error) {
	tag, err := q.Exec(ctx, `DELETE FROM casualdb.conflict_log WHERE logged_at < now() - make_interval(secs => $1)`, keep.Seconds())
	if err != nil {
		return 0, fmt.Errorf("trim conflict log: %w", err)
	}
	return tag.RowsAffected(), nil
}
