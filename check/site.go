package check

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/jackc/pgx/v5"
)

// Site is one site as a check sees it.
type Site interface {
	Name() casualdb.SiteID
	// Progress returns how far the site has captured and applied.
	Progress(ctx context.Context) (Progress, error)
	// Summarize runs Summarize at the site.
	Summarize(ctx context.Context, table string, n int) (Summary, error)
	// Settle waits until capture has versioned, and recorded, every local
	// transaction committed so far, and returns the first transaction id
	// it may not have: a row written by a later one is Fresh.
	Settle(ctx context.Context) (since uint32, err error)
	// Entries runs Entries at the site, every page.
	Entries(ctx context.Context, table string, n int, f Filter, since uint32) ([]Entry, Cost, error)
	// Repair performs a repair at the site (see Repair).
	Repair(ctx context.Context, a Action) (done bool, note string, err error)
}

// Request is what a check asks of a site over the wire.
type Request struct {
	Op      string  `json:"op"` // "progress", "summary", "settle", "entries" or "repair"
	Table   string  `json:"table,omitempty"`
	Buckets int     `json:"buckets,omitempty"`
	Filter  Filter  `json:"filter,omitempty"` // "entries"
	Since   uint32  `json:"since,omitempty"`  // "entries"
	Page    Page    `json:"page,omitempty"`   // "entries"
	Action  *Action `json:"action,omitempty"` // "repair"
}

// Response is a site's answer to a Request.
type Response struct {
	Progress *Progress `json:"progress,omitempty"`
	Summary  *Summary  `json:"summary,omitempty"`
	Since    uint32    `json:"since,omitempty"` // "settle"
	Entries  []Entry   `json:"entries,omitempty"`
	More     bool      `json:"more,omitempty"` // "entries": another page follows
	Cost     Cost      `json:"cost"`
	Done     bool      `json:"done,omitempty"` // "repair"
	Note     string    `json:"note,omitempty"` // "repair": why not done
	Error    string    `json:"error,omitempty"`
}

// Local is this site: it answers from its own database and state.
type Local struct {
	Site casualdb.SiteID
	// Tables are the replicated tables (CasualDB names): the only ones a
	// request may name.
	Tables []string
	// Connect opens a connection to the site's database under
	// casualdb.CanonicalParams; Local closes it.
	Connect func(ctx context.Context) (*pgx.Conn, error)
	// State returns the site's progress.
	State func(ctx context.Context) (Progress, error)
	// Settled waits until capture has versioned and recorded every local
	// transaction that ends at or before the WAL position lsn.
	Settled func(ctx context.Context, lsn uint64) error
}

var _ Site = (*Local)(nil)

// Name implements Site.
func (l *Local) Name() casualdb.SiteID { return l.Site }

// Progress implements Site.
func (l *Local) Progress(ctx context.Context) (Progress, error) { return l.State(ctx) }

func (l *Local) replicated(table string) error {
	if !slices.Contains(l.Tables, table) {
		return fmt.Errorf("table %s is not replicated at site %s", table, l.Site)
	}
	return nil
}

// Summarize implements Site.
func (l *Local) Summarize(ctx context.Context, table string, n int) (s Summary, err error) {
	if err := l.replicated(table); err != nil {
		return s, err
	}
	err = l.withConn(ctx, func(conn *pgx.Conn) error {
		s, err = Summarize(ctx, conn, table, n)
		return err
	})
	return s, err
}

// Settle implements Site: every transaction below the snapshot's xmin had
// ended when it was taken, below the WAL insert position read after it. A
// transaction at or above it may have ended too: its rows count as Fresh
// only while capture has not versioned them.
func (l *Local) Settle(ctx context.Context) (since uint32, err error) {
	var lsn string
	var xmin uint64
	err = l.withConn(ctx, func(conn *pgx.Conn) error {
		return conn.QueryRow(ctx, `SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint, pg_current_wal_insert_lsn()::text`).Scan(&xmin, &lsn)
	})
	if err != nil {
		return 0, fmt.Errorf("settle: %w", err)
	}
	pos, err := casualdb.ParseLSN(lsn)
	if err != nil {
		return 0, err
	}
	if err := l.Settled(ctx, pos); err != nil {
		return 0, fmt.Errorf("settle: wait for capture: %w", err)
	}
	return max(uint32(xmin), 3), nil // 0-2 are not normal transaction ids
}

// Entries implements Site.
func (l *Local) Entries(ctx context.Context, table string, n int, f Filter, since uint32) (es []Entry, c Cost, err error) {
	es, c, _, err = l.entries(ctx, table, n, f, since, Page{Limit: 1 << 30})
	return es, c, err
}

func (l *Local) entries(ctx context.Context, table string, n int, f Filter, since uint32, p Page) (es []Entry, c Cost, more bool, err error) {
	if err := l.replicated(table); err != nil {
		return nil, c, false, err
	}
	err = l.withConn(ctx, func(conn *pgx.Conn) error {
		es, c, more, err = Entries(ctx, conn, table, n, f, since, p)
		return err
	})
	return es, c, more, err
}

// Repair implements Site.
func (l *Local) Repair(ctx context.Context, a Action) (done bool, note string, err error) {
	if err := l.replicated(a.Table); err != nil {
		return false, "", err
	}
	if a.Site != l.Site {
		return false, "", fmt.Errorf("a repair for site %s asked of site %s", a.Site, l.Site)
	}
	err = l.withConn(ctx, func(conn *pgx.Conn) error {
		done, note, err = Repair(ctx, conn, a)
		return err
	})
	return done, note, err
}

func (l *Local) withConn(ctx context.Context, f func(*pgx.Conn) error) error {
	conn, err := l.Connect(ctx)
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		conn.Close(cctx)
	}()
	return f(conn)
}

// Serve answers req for this site.
func (l *Local) Serve(ctx context.Context, req Request) Response {
	var r Response
	var err error
	switch req.Op {
	case "progress":
		var p Progress
		if p, err = l.Progress(ctx); err == nil {
			r.Progress = &p
		}
	case "summary":
		var s Summary
		if s, err = l.Summarize(ctx, req.Table, req.Buckets); err == nil {
			r.Summary, r.Cost = &s, s.Cost
		}
	case "settle":
		r.Since, err = l.Settle(ctx)
	case "entries":
		if req.Page.Limit <= 0 || req.Page.Limit > DefaultPageSize {
			req.Page.Limit = DefaultPageSize
		}
		r.Entries, r.Cost, r.More, err = l.entries(ctx, req.Table, req.Buckets, req.Filter, req.Since, req.Page)
	case "repair":
		if req.Action == nil {
			err = errors.New("a repair request without its action")
			break
		}
		r.Done, r.Note, err = l.Repair(ctx, *req.Action)
	default:
		err = fmt.Errorf("unknown check request %q", req.Op)
	}
	if err != nil {
		r.Error = err.Error()
	}
	return r
}

// Remote is another site, asked through Do (node sends the request over
// NATS to the site's sidecar, which answers with its Local's Serve).
type Remote struct {
	Site casualdb.SiteID
	Do   func(ctx context.Context, req Request) (Response, error)
}

var _ Site = (*Remote)(nil)

// Name implements Site.
func (r *Remote) Name() casualdb.SiteID { return r.Site }

func (r *Remote) ask(ctx context.Context, req Request) (Response, error) {
	resp, err := r.Do(ctx, req)
	if err != nil {
		return resp, err
	}
	if resp.Error != "" {
		return resp, errors.New(resp.Error)
	}
	return resp, nil
}

// Progress implements Site.
func (r *Remote) Progress(ctx context.Context) (Progress, error) {
	resp, err := r.ask(ctx, Request{Op: "progress"})
	if err != nil {
		return Progress{}, err
	}
	if resp.Progress == nil {
		return Progress{}, errors.New("no progress in the answer")
	}
	return *resp.Progress, nil
}

// Summarize implements Site.
func (r *Remote) Summarize(ctx context.Context, table string, n int) (Summary, error) {
	resp, err := r.ask(ctx, Request{Op: "summary", Table: table, Buckets: n})
	if err != nil {
		return Summary{}, err
	}
	if resp.Summary == nil {
		return Summary{}, errors.New("no summary in the answer")
	}
	return *resp.Summary, nil
}

// Settle implements Site.
func (r *Remote) Settle(ctx context.Context) (uint32, error) {
	resp, err := r.ask(ctx, Request{Op: "settle"})
	return resp.Since, err
}

// maxRemoteEntries bounds what one listing takes from a peer (Remote.Entries):
// a peer that answered every page with "more" would otherwise be asked
// again and again, and everything it sent kept, until the check timed out.
// A variable for the tests.
var maxRemoteEntries = 1 << 22

// Entries implements Site: page after page, each at most a page long, and
// at most maxRemoteEntries in all.
func (r *Remote) Entries(ctx context.Context, table string, n int, f Filter, since uint32) ([]Entry, Cost, error) {
	var out []Entry
	var cost Cost
	page := Page{Limit: DefaultPageSize}
	for {
		resp, err := r.ask(ctx, Request{Op: "entries", Table: table, Buckets: n, Filter: f, Since: since, Page: page})
		if err != nil {
			return nil, cost, err
		}
		if len(resp.Entries) > page.Limit {
			return nil, cost, fmt.Errorf("check %s: site %s sent %d entries for a page of %d", table, r.Site, len(resp.Entries), page.Limit)
		}
		if len(out)+len(resp.Entries) > maxRemoteEntries {
			return nil, cost, fmt.Errorf("check %s: site %s lists more than %d entries of the differing buckets: check fewer buckets at a time", table, r.Site, maxRemoteEntries)
		}
		out = append(out, resp.Entries...)
		cost.add(resp.Cost)
		if !resp.More || len(resp.Entries) == 0 {
			return out, cost, nil
		}
		page.After = resp.Entries[len(resp.Entries)-1].Key
	}
}

// Repair implements Site.
func (r *Remote) Repair(ctx context.Context, a Action) (bool, string, error) {
	resp, err := r.ask(ctx, Request{Op: "repair", Action: &a})
	if err != nil {
		return false, "", err
	}
	return resp.Done, resp.Note, nil
}
