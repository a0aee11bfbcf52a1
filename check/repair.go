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
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
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

// Winner returns the state the merge rules give a key from what the sites
// hold: their versions merged with conflict.DecideRow under the table's
// delete policy, oldest first (nil: no site has a version).
func Winner(d Diff, p conflict.DeletePolicy) *conflict.Row {
	var es []Entry
	for _, s := range d.SortedSites() {
		if e := d.Sites[s]; e.Version != nil {
			es = append(es, e)
		}
	}
	slices.SortStableFunc(es, func(a, b Entry) int {
		switch {
		case conflict.Less(*a.Version, *b.Version):
			return -1
		case conflict.Less(*b.Version, *a.Version):
			return 1
		}
		return 0
	})
	var row *conflict.Row
	for _, e := range es {
		dec := conflict.DecideRow(row, *e.Version, e.Deleted, p)
		floor := conflict.Join(dec.Floor, e.Floor)
		row = &conflict.Row{Version: dec.Stored, Deleted: dec.Deleted, Floor: floor}
	}
	return row
}

// Plan returns the repair of a differing key under the table's delete
// policy, or why there is none.
func Plan(table string, d Diff, p conflict.DeletePolicy) (Action, error) {
	sites := d.SortedSites()
	win := Winner(d, p)
	a := Action{Table: table, Key: d.Key}
	if win != nil && win.Deleted {
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
		if e.Present && ((win == nil && e.Version == nil) || (win != nil && e.Version != nil && !e.Deleted && e.Version.Stamp() == win.Version.Stamp())) {
			holders = append(holders, s)
			count[e.Image]++
		}
	}
	if len(holders) == 0 {
		return a, errors.New("no site holds the row of the winning version")
	}
	image := ""
	if win != nil {
		if e, ok := d.Sites[string(win.Version.Origin)]; ok && slices.Contains(holders, string(win.Version.Origin)) {
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
	t, err := describe(ctx, conn, a.Table)
	if err != nil {
		return false, "", err
	}
	var key []string
	if err := json.Unmarshal([]byte(a.Key), &key); err != nil || len(key) != len(t.desc.Keys) {
		return false, "", fmt.Errorf("repair %s: key %s does not match the primary key (%s)", a.Table, a.Key, strings.Join(t.desc.Keys, ", "))
	}
	args := make([]any, len(key))
	for i, k := range key {
		args[i] = k
	}
	tx, err := conn.Begin(ctx)
	if err != nil {
		return false, "", fmt.Errorf("repair %s %s: %w", a.Table, a.Key, err)
	}
	defer func() { _ = tx.Rollback(context.WithoutCancel(ctx)) }()
	// A row a long transaction holds is left for the next check.
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '2s'`); err != nil {
		return false, "", fmt.Errorf("repair %s %s: %w", a.Table, a.Key, err)
	}
	var row string
	err = tx.QueryRow(ctx, fmt.Sprintf(`SELECT to_jsonb(t)::text FROM %s AS t WHERE %s FOR UPDATE`, t.desc.Ident(), t.where), args...).Scan(&row)
	var pe *pgconn.PgError
	switch {
	case errors.Is(err, pgx.ErrNoRows):
		return false, "the row is gone here since the check", nil
	case errors.As(err, &pe) && pe.Code == "55P03":
		return false, "the row is locked by another transaction here", nil
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
		col := t.desc.Keys[0]
		for _, c := range t.desc.Columns {
			if !c.Key && !c.Generated && !c.IdentityAlways {
				col = c.Name
				break
			}
		}
		id := pgx.Identifier{col}.Sanitize()
		write = fmt.Sprintf(`UPDATE %s AS t SET %s = t.%s WHERE %s`, t.desc.Ident(), id, id, t.where)
		logged.RemoteRow = json.RawMessage(row)
	case "delete":
		write = fmt.Sprintf(`DELETE FROM %s AS t WHERE %s`, t.desc.Ident(), t.where)
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
// at the site Plan names, once every site still holds for the key what the
// check saw (a write since then is left alone). Nothing is repaired when
// the cut was not reached: a lagging site's rows would look different.
func repairAll(ctx context.Context, sites []Site, rep *Report, opts Options) {
	byName := map[casualdb.SiteID]Site{}
	for _, s := range sites {
		byName[s.Name()] = s
	}
	for _, t := range rep.Tables {
		var planned []Repaired
		var keys []string
		for _, d := range t.Diffs {
			a, err := Plan(t.Table, d, opts.Policies[t.Table])
			r := Repaired{Action: a}
			switch reason := opts.NoRepair[t.Table]; {
			case !rep.CutOK:
				r.Note = "not repaired: not every site reached the cut"
			case reason != "":
				r.Note = "not repaired: " + reason
			case err != nil:
				r.Note = err.Error()
			case byName[a.Site] == nil:
				r.Note = "site " + string(a.Site) + " is not in the check"
			default:
				keys = append(keys, d.Key)
			}
			planned = append(planned, r)
		}
		moved, err := changedSince(ctx, sites, t, keys)
		for i, d := range t.Diffs {
			r := planned[i]
			switch {
			case r.Note != "":
			case err != nil:
				r.Note = err.Error()
			case moved[d.Key] != "":
				r.Note = "the row changed at site " + moved[d.Key] + " since the check"
			default:
				var rerr error
				if r.Done, r.Note, rerr = byName[r.Site].Repair(ctx, r.Action); rerr != nil {
					r.Note = rerr.Error()
				}
			}
			rep.Repairs = append(rep.Repairs, r)
		}
	}
}

// changedSince lists keys of table t again at every site, in one request
// each, and returns the keys that some site now holds otherwise than the
// check saw, with that site: those are left to replication and the next
// check.
func changedSince(ctx context.Context, sites []Site, t TableReport, keys []string) (map[string]string, error) {
	if len(keys) == 0 {
		return nil, nil
	}
	now, err := each(ctx, sites, func(ctx context.Context, s Site) ([]Entry, error) {
		es, _, err := s.Entries(ctx, t.Table, 1, Filter{Keys: keys}, 0)
		return es, err
	})
	if err != nil {
		return nil, err
	}
	diffs := map[string]Diff{}
	for _, d := range t.Diffs {
		diffs[d.Key] = d
	}
	moved := map[string]string{}
	for i, s := range sites {
		held := map[string]Entry{}
		for _, e := range now[i] {
			held[e.Key] = e
		}
		for _, k := range keys {
			e, ok := held[k]
			if !ok {
				e = Entry{Key: k}
			}
			if was := diffs[k].Sites[string(s.Name())]; !was.same(e) || was.Deleted != e.Deleted {
				moved[k] = string(s.Name())
			}
		}
	}
	return moved, nil
}
