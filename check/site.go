package check

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/jackc/pgx/v5"
)

// Request is what a check asks of a site over the wire.
type Request struct {
	Op      string  `json:"op"` // "progress", "summary" or "entries"
	Table   string  `json:"table,omitempty"`
	Buckets int     `json:"buckets,omitempty"`
	List    []int   `json:"list,omitempty"`   // the buckets to list ("entries")
	Action  *Action `json:"action,omitempty"` // "repair"
}

// Response is a site's answer to a Request.
type Response struct {
	Progress *Progress `json:"progress,omitempty"`
	Summary  *Summary  `json:"summary,omitempty"`
	Entries  []Entry   `json:"entries,omitempty"`
	Cost     Cost      `json:"cost"`
	Done     bool      `json:"done,omitempty"` // "repair"
	Note     string    `json:"note,omitempty"` // "repair": why not done
	Error    string    `json:"error,omitempty"`
}

// Local is this site: it answers from its own database and state.
type Local struct {
	Site casualdb.SiteID
	// Connect opens a connection to the site's database under
	// casualdb.CanonicalParams; Local closes it.
	Connect func(ctx context.Context) (*pgx.Conn, error)
	// State returns the site's progress.
	State func(ctx context.Context) (Progress, error)
}

var _ Site = (*Local)(nil)

// Name implements Site.
func (l *Local) Name() casualdb.SiteID { return l.Site }

// Progress implements Site.
func (l *Local) Progress(ctx context.Context) (Progress, error) { return l.State(ctx) }

// Summarize implements Site.
func (l *Local) Summarize(ctx context.Context, table string, n int) (s Summary, err error) {
	err = l.withConn(ctx, func(conn *pgx.Conn) error {
		s, err = Summarize(ctx, conn, table, n)
		return err
	})
	return s, err
}

// Entries implements Site.
func (l *Local) Entries(ctx context.Context, table string, n int, buckets []int) (es []Entry, c Cost, err error) {
	err = l.withConn(ctx, func(conn *pgx.Conn) error {
		es, c, err = Entries(ctx, conn, table, n, buckets)
		return err
	})
	return es, c, err
}

// Repair implements Site.
func (l *Local) Repair(ctx context.Context, a Action) (done bool, note string, err error) {
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
	case "entries":
		r.Entries, r.Cost, err = l.Entries(ctx, req.Table, req.Buckets, req.List)
	case "repair":
		if req.Action == nil || req.Action.Site != l.Site {
			err = errors.New("a repair request names no action for this site")
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

// Entries implements Site.
func (r *Remote) Entries(ctx context.Context, table string, n int, buckets []int) ([]Entry, Cost, error) {
	resp, err := r.ask(ctx, Request{Op: "entries", Table: table, Buckets: n, List: buckets})
	if err != nil {
		return nil, Cost{}, err
	}
	return resp.Entries, resp.Cost, nil
}

// Repair implements Site.
func (r *Remote) Repair(ctx context.Context, a Action) (bool, string, error) {
	resp, err := r.ask(ctx, Request{Op: "repair", Action: &a})
	if err != nil {
		return false, "", err
	}
	return resp.Done, resp.Note, nil
}
