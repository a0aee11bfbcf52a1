package node

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/check"
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/meta"
	"github.com/casualdb/casualdb/ship"
	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
)

// checkTimeout bounds one check request to a peer: a digest of a large
// table takes seconds.
const checkTimeout = 5 * time.Minute

// localCheck is this site as a check sees it.
func (s *Node) localCheck() *check.Local {
	var tables []string
	for _, t := range s.tables {
		tables = append(tables, t.String())
	}
	settled := func(ctx context.Context, lsn uint64) error {
		if err := s.capturer.WaitProcessed(ctx, lsn); err != nil {
			return err
		}
		return s.capturer.FlushVersions(ctx)
	}
	return &check.Local{Site: casualdb.SiteID(s.cfg.Site), Tables: tables, State: s.checkProgress, Settled: settled, Connect: s.checkConn}
}

// checkConn opens a connection for a check under the canonical settings.
func (s *Node) checkConn(ctx context.Context) (*pgx.Conn, error) {
	cfg, err := apply.CanonicalConfig(s.cfg.Database.DSN)
	if err != nil {
		return nil, err
	}
	cfg.RuntimeParams["application_name"] = "casualdb-check"
	cctx, cancel := context.WithTimeout(ctx, s.cfg.Database.ConnectTimeout)
	defer cancel()
	conn, err := pgx.ConnectConfig(cctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("check: connect to database: %w", err)
	}
	return conn, nil
}

// checkProgress is how far this site has captured and applied.
func (s *Node) checkProgress(ctx context.Context) (check.Progress, error) {
	cs := s.capturer.Stats()
	p := check.Progress{Epoch: s.outbox.Epoch(), LastSeq: cs.LastSeq, Applied: map[casualdb.SiteID]check.AppliedFrom{}}
	if p.LastSeq > 0 {
		lsn, ok := s.capturer.CommitLSN(p.LastSeq)
		if !ok {
			var err error
			if lsn, ok, err = s.outbox.LSN(ctx, p.LastSeq); err != nil {
				return p, err
			}
		}
		if !ok {
			// Trimmed from the outbox and forgotten by capture (an idle
			// site since a restart): the LSN capture recorded with it.
			conn, err := s.checkConn(ctx)
			if err != nil {
				return p, err
			}
			st, err := meta.LoadCaptureState(ctx, conn, casualdb.SiteID(s.cfg.Site))
			conn.Close(context.WithoutCancel(ctx))
			if err != nil {
				return p, err
			}
			if st.OutboxSeq != p.LastSeq || st.LSN == 0 {
				return p, fmt.Errorf("check: the commit LSN of outbox sequence %d is unknown (capture recorded sequence %d)", p.LastSeq, st.OutboxSeq)
			}
			lsn = st.LSN
		}
		p.LastLSN = lsn
	}
	if s.applier != nil {
		for o, os := range s.applier.Stats().Origins {
			p.Applied[o] = check.AppliedFrom{Seq: os.Seq, Epoch: os.Epoch}
		}
	}
	return p, nil
}

// serveChecks answers the check requests of peers, one at a time, until
// ctx is done.
func (s *Node) serveChecks(ctx context.Context) error {
	msgs := make(chan *nats.Msg, 16)
	sub, err := s.nc.ChanSubscribe(ship.CheckSubject(casualdb.SiteID(s.cfg.Site)), msgs)
	if err != nil {
		return fmt.Errorf("subscribe to check requests: %w", err)
	}
	defer func() { _ = sub.Unsubscribe() }()
	local := s.localCheck()
	for {
		select {
		case m := <-msgs:
			if !ship.SafeReply(m.Reply) {
				s.log.Warn("a check request with a reply subject that is no inbox: ignored", "reply", m.Reply)
				continue
			}
			var req check.Request
			var resp check.Response
			if err := json.Unmarshal(m.Data, &req); err != nil {
				resp.Error = fmt.Sprintf("bad check request: %v", err)
			} else {
				rctx, cancel := context.WithTimeout(ctx, checkTimeout)
				resp = local.Serve(rctx, req)
				cancel()
			}
			body, err := json.Marshal(resp)
			if err == nil && int64(len(body)) > s.nc.MaxPayload() {
				err = fmt.Errorf("the answer (%d bytes) exceeds the NATS payload limit (%d)", len(body), s.nc.MaxPayload())
			}
			if err != nil {
				body, _ = json.Marshal(check.Response{Error: err.Error()})
			}
			if err := m.Respond(body); err != nil {
				s.log.Warn("answer a check request", "op", req.Op, "err", err)
			}
		case <-ctx.Done():
			return nil
		}
	}
}

// Check compares the replicated tables (opts.Tables, default every one)
// across this site and every peer it is connected to; peers it cannot
// reach are left out and named in skipped.
func (s *Node) Check(ctx context.Context, opts check.Options) (rep check.Report, skipped []string, err error) {
	if len(opts.Tables) == 0 {
		for _, t := range s.tables {
			opts.Tables = append(opts.Tables, t.String())
		}
	}
	sites := []check.Site{s.localCheck()}
	var conns []*nats.Conn
	defer func() {
		for _, nc := range conns {
			nc.Close()
		}
	}()
	for _, p := range s.peerList() {
		sh := s.shipper(p)
		if sh == nil || !sh.Connected() {
			skipped = append(skipped, string(p)+" (not connected)")
			continue
		}
		nc, err := nats.Connect(sh.PeerURL(), append(ship.PeerOptions(s.natsTLS, casualdb.SiteID(s.cfg.Site)), nats.Name("casualdb-check-"+s.cfg.Site), nats.Timeout(5*time.Second), nats.NoReconnect())...)
		if err != nil {
			skipped = append(skipped, fmt.Sprintf("%s (%v)", p, err))
			continue
		}
		conns = append(conns, nc)
		subject := ship.CheckSubject(p)
		sites = append(sites, &check.Remote{Site: p, Do: func(ctx context.Context, req check.Request) (check.Response, error) {
			var resp check.Response
			body, _ := json.Marshal(req)
			rctx, cancel := context.WithTimeout(ctx, checkTimeout)
			defer cancel()
			m, err := nc.RequestWithContext(rctx, subject, body)
			if err != nil {
				return resp, fmt.Errorf("ask %s: %w", p, err)
			}
			if err := json.Unmarshal(m.Data, &resp); err != nil {
				return resp, fmt.Errorf("answer of %s: %w", p, err)
			}
			return resp, nil
		}})
	}
	def, own := s.cfg.Conflicts.DeletePolicies()
	opts.Policies = withDefault(own, def, opts.Tables)
	opts.NoRepair = map[string]string{}
	for t := range s.cfg.Conflicts.MergeColumns() {
		opts.NoRepair[t] = "its columns merge one by one (merge: columns), and a rewrite of the row changes no column's version"
	}
	for t, cols := range s.cfg.Conflicts.Counters() {
		if len(cols) > 0 {
			opts.NoRepair[t] = "its counter columns merge by increments, and a rewrite adds nothing to them"
		}
	}
	rep, err = check.Run(ctx, sites, opts)
	return rep, skipped, err
}

// withDefault returns the policy of every table: its own, or def.
func withDefault(own map[string]conflict.DeletePolicy, def conflict.DeletePolicy, tables []string) map[string]conflict.DeletePolicy {
	out := map[string]conflict.DeletePolicy{}
	for _, t := range tables {
		p, ok := own[t]
		if !ok {
			p = def
		}
		out[t] = p
	}
	return out
}

// AntiEntropyStatus is what the background checks did since start (/status).
type AntiEntropyStatus struct {
	Runs     uint64    `json:"runs"`
	Failed   uint64    `json:"failed_runs"`
	Skipped  uint64    `json:"skipped_runs"` // another site's turn
	RowsRead uint64    `json:"rows_read"`    // by every site checked
	Differ   int       `json:"differing_rows"`
	InFlight int       `json:"in_flight_rows"`
	Repairs  uint64    `json:"repairs"`
	LastRun  time.Time `json:"last_run,omitempty"`
	LastErr  string    `json:"last_error,omitempty"`
}

// antiEntropy runs a check every antientropy.interval until ctx is done,
// repairing what it finds when antientropy.repair is set. Of the sites
// that run it, the one with the smallest name among those connected to
// each other checks: one check of the cluster per interval, not one per
// site, and another site takes over when it is down.
func (s *Node) antiEntropy(ctx context.Context) error {
	tick := time.NewTicker(s.cfg.AntiEntropy.Interval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
		if !s.antiEntropyTurn() {
			s.noteAntiEntropy(func(st *AntiEntropyStatus) { st.Skipped++ })
			continue
		}
		rctx, cancel := context.WithTimeout(ctx, antiEntropyRunTimeout)
		rep, skipped, err := s.Check(rctx, check.Options{Buckets: s.cfg.AntiEntropy.Buckets, Repair: s.cfg.AntiEntropy.Repair})
		cancel()
		if ctx.Err() != nil {
			return nil
		}
		s.noteAntiEntropy(func(st *AntiEntropyStatus) {
			st.Runs++
			st.LastRun = time.Now()
			st.LastErr = ""
			if err != nil {
				st.Failed++
				st.LastErr = err.Error()
				return
			}
			st.Differ, st.InFlight = rep.Differ, rep.InFlight
			for _, c := range rep.Cost {
				st.RowsRead += uint64(c.Rows)
			}
			for _, r := range rep.Repairs {
				if r.Done {
					st.Repairs++
				}
			}
		})
		switch {
		case err != nil:
			s.log.Warn("anti-entropy check failed", "err", err)
		case !rep.Clean():
			s.log.Warn("anti-entropy: sites differ", "rows", rep.Differ, "repairs", len(rep.Repairs), "repair", s.cfg.AntiEntropy.Repair, "not_checked", skipped)
		case !rep.Conclusive() || len(skipped) > 0:
			s.log.Info("anti-entropy: inconclusive", "cut_reached", rep.CutOK, "unverifiable", rep.Unverifiable, "not_checked", skipped)
		default:
			s.log.Debug("anti-entropy: the sites agree", "in_flight", rep.InFlight, "took", rep.Took, "not_checked", skipped)
		}
	}
}

// antiEntropyRunTimeout bounds one background check.
const antiEntropyRunTimeout = 30 * time.Minute

// antiEntropyTurn tells whether this site runs the next background check.
func (s *Node) antiEntropyTurn() bool {
	for _, p := range s.peerList() {
		if sh := s.shipper(p); sh != nil && sh.Connected() && string(p) < s.cfg.Site {
			return false
		}
	}
	return true
}

func (s *Node) noteAntiEntropy(f func(*AntiEntropyStatus)) {
	s.mu.Lock()
	defer s.mu.Unlock()
	f(&s.ae)
}
