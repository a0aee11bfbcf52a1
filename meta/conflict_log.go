package meta

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/casualdb/casualdb"
)

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

// ConflictFilter selects logged conflicts for FindConflicts.
type ConflictFilter struct {
	Since time.Duration // how far back from the server's now(); must be positive
	Table string        // CasualDB table name (schema.name); empty: every table
	Limit int           // at most this many rows, the newest
}

// LoggedConflict is one row of casualdb.conflict_log, as LogConflict wrote
// it.
type LoggedConflict struct {
	ID       int64
	LoggedAt time.Time // UTC
	Table    string    // schema.name (casualdb.TableName)
	Key      string    // casualdb.KeyString: a JSON array of the key's values in text form
	Rule     string
	Winner   string // "local" or "remote"
	// The versions; nil when none was recorded.
	LocalVersion, RemoteVersion *casualdb.Version
	// The row images as JSON objects; nil when there was no row: absent
	// (deleted) here for the local one, a delete for the remote one.
	LocalRow, RemoteRow json.RawMessage

	localVersion, remoteVersion []byte // the jsonb as read
}

// conflictColumns are the columns read from casualdb.conflict_log, in
// order, with where each is scanned to. A new column (say kind) is one more
// line here and a field in LoggedConflict.
var conflictColumns = []struct {
	name string
	dest func(*LoggedConflict) any
}{
	{"id", func(c *LoggedConflict) any { return &c.ID }},
	{"logged_at", func(c *LoggedConflict) any { return &c.LoggedAt }},
	{"tbl", func(c *LoggedConflict) any { return &c.Table }},
	{"key", func(c *LoggedConflict) any { return &c.Key }},
	{"rule", func(c *LoggedConflict) any { return &c.Rule }},
	{"winner", func(c *LoggedConflict) any { return &c.Winner }},
	{"local_version", func(c *LoggedConflict) any { return &c.localVersion }},
	{"remote_version", func(c *LoggedConflict) any { return &c.remoteVersion }},
	{"local_row", func(c *LoggedConflict) any { return &c.LocalRow }},
	{"remote_row", func(c *LoggedConflict) any { return &c.RemoteRow }},
}

// sql returns the statement and its arguments. The window is measured by the
// server's clock, which also wrote logged_at.
func (f ConflictFilter) sql() (string, []any) {
	cols := make([]string, len(conflictColumns))
	for i, c := range conflictColumns {
		cols[i] = c.name
	}
	args := []any{f.Since.Seconds()}
	where := []string{"logged_at >= now() - make_interval(secs => $1)"}
	if f.Table != "" {
		args = append(args, f.Table)
		where = append(where, fmt.Sprintf("tbl = $%d", len(args)))
	}
	args = append(args, f.Limit)
	return fmt.Sprintf("SELECT %s FROM casualdb.conflict_log WHERE %s ORDER BY logged_at DESC, id DESC LIMIT $%d",
		strings.Join(cols, ", "), strings.Join(where, " AND "), len(args)), args
}

// FindConflicts returns the logged conflicts f selects, newest first (by
// the time they were logged, then by id).
func FindConflicts(ctx context.Context, q Querier, f ConflictFilter) ([]LoggedConflict, error) {
	sql, args := f.sql()
	rows, err := q.Query(ctx, sql, args...)
	if err != nil {
		return nil, fmt.Errorf("read conflict log: %w", notInstalled(err))
	}
	defer rows.Close()
	list := []LoggedConflict{}
	for rows.Next() {
		var c LoggedConflict
		dest := make([]any, len(conflictColumns))
		for i, col := range conflictColumns {
			dest[i] = col.dest(&c)
		}
		if err := rows.Scan(dest...); err != nil {
			return nil, fmt.Errorf("read conflict log: %w", err)
		}
		if c.LocalVersion, err = decodeVersion(c.localVersion); err != nil {
			return nil, fmt.Errorf("read conflict log: id %d: local_version: %w", c.ID, err)
		}
		if c.RemoteVersion, err = decodeVersion(c.remoteVersion); err != nil {
			return nil, fmt.Errorf("read conflict log: id %d: remote_version: %w", c.ID, err)
		}
		c.LoggedAt = c.LoggedAt.UTC()
		list = append(list, c)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("read conflict log: %w", notInstalled(err))
	}
	return list, nil
}

// decodeVersion decodes a version as LogConflict stores it. SQL NULL and
// the zero version (apply had none on record) are nil.
func decodeVersion(b []byte) (*casualdb.Version, error) {
	if len(b) == 0 {
		return nil, nil
	}
	var v casualdb.Version
	if err := json.Unmarshal(b, &v); err != nil {
		return nil, err
	}
	if v.HLC.Wall == 0 && v.Origin == "" {
		return nil, nil
	}
	return &v, nil
}
