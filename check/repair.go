package check

import (
	"context"
	"crypto/md5"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// Repair. Every site must end with the row the merge rules choose: the
// greatest version on record at any site (conflict.Less), live or deleted.
// A repair does not copy rows between sites behind replication's back: one
// site writes the key again as an ordinary local write (RuleRepair in its
// conflict log), which capture versions above every version of the key it
// knows and ships like any change; every other site's apply merges it by
// the same rules as always. That makes a repair logged, idempotent (a
// second check finds nothing to do) and safe against a write racing it
// (the repairing site checks that the row is still as the check saw it).
//
//   - The winner is live: the site that holds it with the chosen image
//     rewrites the row (an UPDATE of the row to itself), and the new version
//     carries the image everywhere, to a site that lacks the row too. When
//     sites holding the same version have different images (a write that
//     bypassed replication), the image of the version's origin is the one
//     captured and shipped: it wins; without the origin, the image most
//     sites hold, then the smallest digest.
//   - The winner is deleted: a site that still holds the row deletes it,
//     and the tombstone goes everywhere.
//   - No version anywhere (a row written with replication bypassed before
//     any version of the key): the row is kept and rewritten, never dropped.
//
// Not repairable here (the report says why): a live winner that no site
// holds the row of. Counter columns (conflicts.tables.*.counters) merge by
// increments, so a rewrite adds nothing to them: their values are not
// repaired.

// RuleRepair names a repair's entry in the conflict log.
const RuleRepair = "antientropy_repair"

// Action is one repair: what one site must write for one key.
type Action struct {
	Table string          `json:"table"`
	Key   string          `json:"key"` // casualdb.KeyString
	Site  casualdb.SiteID `json:"site"`
	Op    string          `json:"op"` // "rewrite" or "delete"
	// What the row must still be at Site: present with this image (md5),
	// and this version on record (nil: none).
	Image   string            `json:"image"`
	Version *casualdb.Version `json:"version,omitempty"`
}

// Repaired is the outcome of one Action.
type Repaired struct {
	Action
	Done bool   `json:"done"`
	Note string `json:"note,omitempty"` // why not, when not done
}

// Plan returns the repair of a differing key, or why there is none.
func Plan(table string, d Diff) (Action, error) {
	sites := d.SortedSites()
	var win *casualdb.Version
	deleted := false
	for _, s := range sites {
		e := d.Sites[s]
		if e.Version != nil && (win == nil || conflict.Less(*win, *e.Version)) {
			win, deleted = e.Version, e.Deleted
		}
	}
	a := Action{Table: table, Key: d.Key}
	if win != nil && deleted {
		for _, s := range sites {
			if e := d.Sites[s]; e.Present {
				a.Site, a.Op, a.Image, a.Version = casualdb.SiteID(s), "delete", e.Image, e.Version
				return a, nil
			}
		}
		return a, errors.New("no site holds the row: nothing to delete")
	}
	// The holders of the winning version (of any row, when none has one),
	// and the image they should all have.
	var holders []string
	count := map[string]int{}
	for _, s := range sites {
		e := d.Sites[s]
		if e.Present && ((win == nil && e.Version == nil) || (win != nil && e.Version != nil && e.Version.Stamp() == win.Stamp())) {
			holders = append(holders, s)
			count[e.Image]++
		}
	}
	if len(holders) == 0 {
		return a, errors.New("no site holds the row of the winning version")
	}
	image := ""
	if win != nil {
		if e, ok := d.Sites[string(win.Origin)]; ok && slices.Contains(holders, string(win.Origin)) {
			image = e.Image
		}
	}
	if image == "" {
		for img, n := range count {
			if image == "" || n > count[image] || (n == count[image] && img < image) {
				image = img
			}
		}
	}
	for _, s := range holders {
		if e := d.Sites[s]; e.Image == image {
			a.Site, a.Op, a.Image, a.Version = casualdb.SiteID(s), "rewrite", image, e.Version
			return a, nil
		}
	}
	return a, errors.New("no holder of the chosen image") // unreachable: image is a holder's
}

// Repair performs a at this site, in one transaction on conn (an ordinary
// session: capture versions and ships what it writes): the row must still
// be as the check saw it, else nothing is written and done is false with
// the reason.
func Repair(ctx context.Context, conn *pgx.Conn, a Action) (done bool, note string, err error) {
	schema, rel, _ := strings.Cut(a.Table, ".")
	t, err := apply.DescribeTable(ctx, conn, schema, rel)
	if err != nil {
		return false, "", err
	}
	var key []string
	if err := json.Unmarshal([]byte(a.Key), &key); err != nil || len(key) != len(t.Keys) || len(key) == 0 {
		return false, "", fmt.Errorf("repair %s: key %s does not match the primary key (%s)", a.Table, a.Key, strings.Join(t.Keys, ", "))
	}
	var conds []string
	args := make([]any, len(key))
	for i, k := range t.Keys {
		c, _ := t.Column(k)
		conds = append(conds, fmt.Sprintf("t.%s = CAST($%d::text AS %s)", pgx.Identifier{k}.Sanitize(), i+1, c.Type))
		args[i] = key[i]
	}
	where := strings.Join(conds, " AND ")
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, "", fmt.Errorf("repair %s %s: %w", a.Table, a.Key, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	var row string
	err = tx.QueryRow(ctx, fmt.Sprintf(`SELECT row_to_json(t)::text FROM %s AS t WHERE %s FOR UPDATE`, t.Ident(), where), args...).Scan(&row)
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, "the row is gone here since the check", nil
	case err != nil:
		return false, "", fmt.Errorf("repair %s %s: read the row: %w", a.Table, a.Key, err)
	}
	if md5hex(row) != a.Image {
		return false, "the row changed here since the check", nil
	}
	vs, err := meta.LoadVersions(ctx, tx, []meta.RowKey{{Table: a.Table, Key: a.Key}})
	if err != nil {
		return false, "", err
	}
	rv, ok := vs[meta.RowKey{Table: a.Table, Key: a.Key}]
	if ok != (a.Version != nil) || (ok && rv.Version.Stamp() != a.Version.Stamp()) {
		return false, "the row's version changed here since the check", nil
	}
	var write string
	logged := meta.Conflict{Table: a.Table, Key: a.Key, Rule: RuleRepair, Winner: "local", LocalRow: json.RawMessage(row)}
	if ok {
		logged.LocalVersion = rv.Version
	}
	switch a.Op {
	case "rewrite":
		col := t.Keys[0]
		for _, c := range t.Columns {
			if !c.Key && !c.Generated && !c.IdentityAlways {
				col = c.Name
				break
			}
		}
		id := pgx.Identifier{col}.Sanitize()
		write = fmt.Sprintf(`UPDATE %s AS t SET %s = t.%s WHERE %s`, t.Ident(), id, id, where)
		logged.RemoteRow = json.RawMessage(row)
	case "delete":
		write = fmt.Sprintf(`DELETE FROM %s AS t WHERE %s`, t.Ident(), where)
		logged.RemoteRow = json.RawMessage("null")
	default:
		return false, "", fmt.Errorf("repair %s %s: unknown action %q", a.Table, a.Key, a.Op)
	}
	if _, err := tx.Exec(ctx, write, args...); err != nil {
		return false, "", fmt.Errorf("repair %s %s: %s: %w", a.Table, a.Key, a.Op, err)
	}
	if err := meta.LogConflict(ctx, tx, logged); err != nil {
		return false, "", err
	}
	if err := tx.Commit(ctx); err != nil {
		return false, "", fmt.Errorf("repair %s %s: commit: %w", a.Table, a.Key, err)
	}
	return true, "", nil
}

func md5hex(s string) string { return fmt.Sprintf("%x", md5.Sum([]byte(s))) }

// repairAll plans and performs the repair of every difference in rep, each
// at the site Plan names.
func repairAll(ctx context.Context, sites []Site, rep *Report) {
	byName := map[casualdb.SiteID]Site{}
	for _, s := range sites {
		byName[s.Name()] = s
	}
	for _, t := range rep.Tables {
		for _, d := range t.Diffs {
			a, err := Plan(t.Table, d)
			r := Repaired{Action: a}
			switch {
			case err != nil:
				r.Note = err.Error()
			case byName[a.Site] == nil:
				r.Note = "site " + string(a.Site) + " is not in the check"
			default:
				if r.Done, r.Note, err = byName[a.Site].Repair(ctx, a); err != nil {
					r.Note = err.Error()
				}
			}
			rep.Repairs = append(rep.Repairs, r)
		}
	}
}
