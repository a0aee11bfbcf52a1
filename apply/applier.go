package apply

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// Capture is what apply needs of the local capture: *capture.Capturer.
type Capture interface {
	// WaitProcessed returns once every local write ending at or before
	// lsn has been versioned.
	WaitProcessed(ctx context.Context, lsn uint64) error
	// BeginApply and EndApply bracket the commit of an apply transaction
	// that recorded w; ok tells whether it committed.
	BeginApply(xid uint32, w meta.Written)
	EndApply(xid uint32, ok bool)
	// Pending returns the versions of local writes that are not recorded
	// in the database yet (call it before reading the database), and
	// whether some key has one capture is still storing.
	Pending(keys []meta.RowKey) (map[meta.RowKey]meta.RowVersion, bool)
	// FlushVersions returns once every pending version is recorded.
	FlushVersions(ctx context.Context) error
	// TruncationGen changes whenever capture records a local truncation.
	TruncationGen() uint64
}

// DefaultMaxBatch is Config.MaxBatch's default.
const DefaultMaxBatch = 2048

// Config configures an Applier.
type Config struct {
	// Site is this site. Required.
	Site casualdb.SiteID
	// DSN is the local PostgreSQL connection string. Required.
	DSN string
	// Inbox is the site's inbox, read through one consumer per origin.
	// Required.
	Inbox Inbox
	// Capture is the local capture. Required.
	Capture Capture
	// MaxBatch is the most transactions of one origin applied in one local
	// transaction. Default 2048: a run's round trips and waits cost the
	// same for 10 transactions as for 2,000, and a backlog replays at
	// 8,900 transactions a second in runs of 256, 13,500 in runs of 4,096
	// (bench, backlog scenario). A run holds the locks of its rows until it
	// commits (tens of milliseconds for 2,048 single-row transactions).
	MaxBatch int
	// WaitTimeout bounds a wait for capture. Default 30s.
	WaitTimeout time.Duration
	// VersionCache is how many versions of rows it wrote apply keeps in
	// memory (see versionCache). Default 100000; negative: none.
	VersionCache int
	// DeletePolicy is the policy of tables not in Policies: what a delete
	// does to a concurrent update. Default conflict.DeleteWins.
	DeletePolicy conflict.DeletePolicy
	// Policies overrides DeletePolicy per table (schema-qualified name).
	Policies map[string]conflict.DeletePolicy
	// MergeColumns lists the tables whose columns merge one by one (each
	// its own last writer) instead of the whole row.
	MergeColumns map[string]bool
	// Logger; default slog.Default().
	Logger *slog.Logger
	// ObserveDelay, when set, is told for every transaction how long after
	// its commit at the origin it reached stage ("received": read from the
	// inbox; "applied": committed here). Clock differences between the
	// sites are included.
	ObserveDelay func(origin casualdb.SiteID, stage string, d time.Duration)
	// Resend, when set, asks origin to ship its transactions to this site
	// again from sequence from: called when an origin's sequence gap has
	// lasted GapResend (a transaction lost on the way), again every
	// GapResend while it lasts. It must return within seconds.
	Resend func(ctx context.Context, origin casualdb.SiteID, from uint64) error
	// GapResend; default 30s (a large catch-up has gaps that close by
	// themselves within seconds: asking sooner re-ships it all again).
	GapResend time.Duration
	// Hinter, when set, sees every transaction taken from the inbox
	// before it is applied or acknowledged (hinted handoff).
	Hinter Hinter
	// Peers, when set, returns the sites this one exchanges transactions
	// with (configured, or learned by gossip): apply reads each one's
	// transactions from the moment it is known. Others (the origin of a
	// hint) are found by looking at the inbox every discoverEvery. It is
	// called often and must be cheap.
	Peers func() []casualdb.SiteID
}

// OriginStats describes what was applied from one origin.
type OriginStats struct {
	Applied     uint64    // transactions applied since start
	Seq         uint64    // last applied origin sequence
	LastCommit  time.Time // origin commit time of the last applied transaction
	LastApplied time.Time // when it was applied here
	Epoch       string    // of the origin's outbox, which Seq counts in
	// Held is how many of its transactions apply has taken from the inbox
	// and holds, waiting for their turn (a predecessor, a dependency).
	Held int
}

// Lag is the delay of the last applied transaction: applied minus committed.
func (o OriginStats) Lag() time.Duration {
	if o.LastCommit.IsZero() {
		return 0
	}
	return max(o.LastApplied.Sub(o.LastCommit), 0)
}

// Stats are apply's counters since start.
type Stats struct {
	Applied   uint64 // transactions applied
	Skipped   uint64 // duplicates recognised and skipped
	Changes   uint64 // row changes written
	Conflicts uint64 // true conflicts resolved (and logged)
	Parked    uint64 // changes or messages parked
	Garbled   uint64 // messages that did not decode (parked)
	// DependencyWaits counts transactions held back because a transaction
	// they causally depend on (from another origin) was not applied yet.
	DependencyWaits uint64
	// Resends counts requests to an origin to ship again what is missing.
	Resends uint64
	Origins map[casualdb.SiteID]OriginStats
}

// Applier applies the inbox to the local database.
type Applier struct {
	cfg Config
	log *slog.Logger

	conns    map[casualdb.SiteID]*pgx.Conn
	main     *pgx.Conn
	progress map[casualdb.SiteID]meta.Progress
	tables   map[string]*localTable
	// truncs caches casualdb.truncation as of capture's truncation
	// generation truncGen (valid unless apply truncated since).
	truncs      map[string]casualdb.Version
	truncGen    uint64
	truncsValid bool
	vcache      *versionCache

	gapSince map[casualdb.SiteID]time.Time // when each origin's current gap was first seen
	depSince map[casualdb.SiteID]time.Time // when each origin's current dependency wait began
	resend   map[casualdb.SiteID]*resendState

	mu    sync.Mutex
	stats Stats
}

// New validates cfg and returns an Applier.
func New(cfg Config) (*Applier, error) {
	if cfg.Site == "" || cfg.DSN == "" || cfg.Inbox == nil || cfg.Capture == nil {
		return nil, fmt.Errorf("%w: apply needs site, dsn, inbox and capture", casualdb.ErrConfig)
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.GapResend <= 0 {
		cfg.GapResend = 30 * time.Second
	}
	if cfg.WaitTimeout <= 0 {
		cfg.WaitTimeout = 30 * time.Second
	}
	if cfg.VersionCache == 0 {
		cfg.VersionCache = 100000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Applier{
		cfg:   cfg,
		log:   cfg.Logger.With("component", "apply"),
		stats: Stats{Origins: map[casualdb.SiteID]OriginStats{}},
	}, nil
}

// Stats returns a snapshot of the counters.
func (a *Applier) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.stats
	s.Origins = make(map[casualdb.SiteID]OriginStats, len(a.stats.Origins))
	for k, v := range a.stats.Origins {
		s.Origins[k] = v
	}
	return s
}

func (a *Applier) count(f func(*Stats)) {
	a.mu.Lock()
	f(&a.stats)
	a.mu.Unlock()
}

// inMsg is one transaction from the inbox with its transport headers.
type inMsg struct {
	d      *delivery
	tx     *casualdb.Tx
	data   []byte // tx as shipped
	origin casualdb.SiteID
	seq    uint64
	epoch  string
	hinted bool // the Hinter has seen it

	received time.Time // taken from the inbox
}

// progress is the origin's progress once im is applied.
func (im inMsg) progress(appliedAt time.Time) meta.Progress {
	return meta.Progress{Seq: im.seq, LSN: im.tx.LSN, CommitTime: im.tx.CommitTime, Epoch: im.epoch, AppliedAt: appliedAt}
}

// Run applies until ctx is done or a database error persists.
//
// It reads every origin through its own consumer and holds what it took in
// memory, in each origin's sequence order, until it can be applied: an
// origin whose next transaction waits (for its predecessor, or for what it
// causally depends on from another origin) stays where it is while the
// others go on, and goes on itself once the others have applied what it
// needs. Each pass over the origins applies at most one run (MaxBatch
// transactions, one local transaction) of each, so that dependent origins
// interleave finely.
func (a *Applier) Run(ctx context.Context) error {
	cfg, err := CanonicalConfig(a.cfg.DSN)
	if err != nil {
		return err
	}
	a.main, err = pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return fmt.Errorf("apply: connect: %w", err)
	}
	a.conns = map[casualdb.SiteID]*pgx.Conn{}
	a.tables = map[string]*localTable{}
	a.vcache = newVersionCache(a.cfg.VersionCache)
	defer func() {
		for _, c := range a.conns {
			c.Close(context.Background())
		}
		a.main.Close(context.Background())
	}()
	if a.progress, err = meta.LoadProgress(ctx, a.main); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	known := make([]casualdb.SiteID, 0, len(a.progress))
	a.mu.Lock()
	for o, p := range a.progress {
		a.stats.Origins[o] = OriginStats{Seq: p.Seq, LastCommit: p.CommitTime, LastApplied: p.AppliedAt, Epoch: p.Epoch}
		if o != a.cfg.Site {
			known = append(known, o)
		}
	}
	a.mu.Unlock()

	// The consumers' callbacks end with this run, whatever ends it.
	rctx, cancel := context.WithCancel(ctx)
	in := newIntake(a.cfg.Inbox, pullMsgs)
	defer func() {
		cancel()
		in.stop()
	}()
	if a.cfg.Peers != nil {
		known = append(known, a.cfg.Peers()...)
	}
	if err := in.discover(rctx, known); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	// Work arrives through in.wake; the tick only paces retries (a failed
	// run waits a second) and the periodic chores. Each tick wakes an idle
	// sidecar: four a second were a tenth of its idle CPU.
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	lastDiscover, lastKeepAlive, lastPeers := time.Now(), time.Now(), time.Now()
	decode := func(m *casualdb.InboxMsg, d *delivery) ([]inMsg, error) { return a.decodeMsg(ctx, m, d) }
	for {
		if now := time.Now(); now.Sub(lastDiscover) >= discoverEvery {
			// An origin that is not a peer (a hint's, say): its first
			// transactions wait at most discoverEvery.
			if err := in.discover(rctx, nil); err != nil {
				return fmt.Errorf("apply: %w", err)
			}
			lastDiscover = now
		}
		if now := time.Now(); a.cfg.Peers != nil && now.Sub(lastPeers) >= peersEvery {
			// A peer is read from (about) the moment it is known.
			if err := in.ensure(rctx, a.cfg.Peers()); err != nil {
				return fmt.Errorf("apply: %w", err)
			}
			lastPeers = now
		}
		if err := in.take(decode); err != nil {
			return err
		}
		progressed, err := a.applyReady(ctx, in)
		if err != nil {
			return err
		}
		a.noteHeld(in)
		if now := time.Now(); now.Sub(lastKeepAlive) >= time.Second {
			in.keepAlive(now)
			lastKeepAlive = now
		}
		if progressed {
			continue
		}
		select {
		case <-in.wake:
		case <-tick.C:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// discoverEvery is how often apply looks for origins it has no consumer
// for: an origin's first transactions wait at most this long.
const discoverEvery = 5 * time.Second

// peersEvery is how often apply asks the sidecar for its peers.
const peersEvery = 100 * time.Millisecond

// noteHeld publishes how many transactions each origin holds.
func (a *Applier) noteHeld(in *intake) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, q := range in.order {
		if o := a.stats.Origins[q.origin]; o.Held != len(q.held) {
			o.Held = len(q.held)
			a.stats.Origins[q.origin] = o
		}
	}
}

// applyReady makes one pass over the origins and applies at most one run
// of each from the head of what it holds. progressed tells whether anything
// was applied or recognised as a duplicate.
func (a *Applier) applyReady(ctx context.Context, in *intake) (progressed bool, err error) {
	for _, q := range in.order {
		if len(q.held) == 0 || time.Now().Before(q.retry) {
			continue
		}
		n, err := a.applyHead(ctx, q)
		if err != nil {
			return progressed, err
		}
		progressed = progressed || n > 0
	}
	return progressed, nil
}

// applyHead applies the longest run of q's held transactions that may be
// applied now, and returns how many transactions it consumed (applied, or
// recognised as duplicates).
func (a *Applier) applyHead(ctx context.Context, q *originQueue) (int, error) {
	origin := q.origin
	committed := a.progress[origin] // what is committed here; the run moves a.progress ahead
	var run, twins []inMsg
	gap := false // the head waits for a missing sequence
	i := 0
build:
	for ; i < len(q.held) && len(run) < a.cfg.MaxBatch; i++ {
		im := &q.held[i]
		if a.cfg.Hinter != nil && !im.hinted {
			// Before the message can be acknowledged: a hint kept only
			// after the commit would be lost by a crash in between.
			err := a.cfg.Hinter.Hint(ctx, Received{Origin: im.origin, Epoch: im.epoch, Seq: im.seq, Tx: im.tx, Data: im.data})
			if err != nil {
				a.log.Warn("keep hint; the transaction waits", "origin", im.origin, "seq", im.seq, "err", err)
				q.retry = time.Now().Add(time.Second)
				break build
			}
			im.hinted = true
		}
		switch a.admit(*im) {
		case admitDuplicate:
			if im.tx.LSN <= committed.LSN {
				a.count(func(s *Stats) { s.Skipped++ })
				im.d.done()
			} else {
				// A second copy (a resend) of a transaction in this run:
				// acknowledged only once the run commits.
				twins = append(twins, *im)
			}
			continue
		case admitGap:
			// An earlier transaction of this origin is missing (a publish
			// that failed and will come again, or is asked for again).
			a.noteGap(ctx, *im)
			gap = len(run) == 0
			break build
		}
		if len(run) > 0 && (hasTruncate(im.tx) || hasTruncate(run[len(run)-1].tx)) {
			break build
		}
		if site, lsn, ok := a.missingDep(*im); ok {
			if _, waiting := a.depSince[origin]; !waiting {
				a.count(func(s *Stats) { s.DependencyWaits++ })
			}
			a.noteDependency(*im, site, lsn)
			break build
		}
		delete(a.gapSince, origin)
		delete(a.depSince, origin)
		delete(a.resend, origin)
		// Admit the next one of the same origin against this one.
		a.progress[origin] = im.progress(committed.AppliedAt)
		run = append(run, *im)
	}
	if len(run) == 0 {
		q.held = q.held[i:]
		if gap && q.full() {
			// The missing one comes after what is held: make room.
			if n := q.release(time.Second); n > 0 {
				a.log.Debug("handed back held messages behind a gap", "origin", origin, "messages", n)
			}
		}
		return i, nil
	}
	n, err := a.applyRun(ctx, run)
	if err != nil {
		return 0, err
	}
	switch {
	case n == 0:
		// Tried again in a second (applyRun reloaded the progress).
		q.retry = time.Now().Add(time.Second)
	case n < len(run):
		// A careful retry applied a prefix; the rest goes next.
		a.progress[origin] = run[n-1].progress(committed.AppliedAt)
	}
	// What was applied, and the copies of it, are done with; the rest and
	// its copies stay held, in order.
	for _, im := range run[:n] {
		im.d.done()
	}
	keep := append([]inMsg{}, run[n:]...)
	for _, im := range twins {
		if n > 0 && im.seq <= run[n-1].seq {
			a.count(func(s *Stats) { s.Skipped++ })
			im.d.done()
		} else {
			keep = append(keep, im)
		}
	}
	if len(keep) == 0 {
		q.held = q.held[i:]
		return i, nil
	}
	slices.SortStableFunc(keep, func(x, y inMsg) int { return cmp.Compare(x.seq, y.seq) })
	q.held = append(keep, q.held[i:]...)
	return i - len(keep), nil
}

// resendState paces the requests to one origin to ship again.
type resendState struct {
	next  time.Time
	every time.Duration
}

// askResend asks the origin to ship again from the first missing sequence
// once a gap has lasted cfg.GapResend, then again with doubling intervals
// (at most 5 minutes) while it lasts: a transaction lost between the origin
// and this inbox comes again, and one the origin no longer holds at least
// does not cost a full re-shipping every few seconds.
func (a *Applier) askResend(ctx context.Context, origin casualdb.SiteID) {
	if a.cfg.Resend == nil {
		return
	}
	if a.resend == nil {
		a.resend = map[casualdb.SiteID]*resendState{}
	}
	now := time.Now()
	st, ok := a.resend[origin]
	if !ok {
		a.resend[origin] = &resendState{next: now.Add(a.cfg.GapResend), every: a.cfg.GapResend}
		return
	}
	if now.Before(st.next) {
		return
	}
	from := a.progress[origin].Seq + 1
	rctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	err := a.cfg.Resend(rctx, origin, from)
	cancel()
	a.count(func(s *Stats) { s.Resends++ })
	if err != nil {
		a.log.Warn("ask an origin to ship again what is missing", "origin", origin, "from_seq", from, "err", err)
	} else {
		a.log.Warn("transactions of an origin missing: asked it to ship them again", "origin", origin, "from_seq", from)
	}
	st.every = min(2*st.every, 5*time.Minute)
	st.next = now.Add(st.every)
}

// noteGap warns, once, when an origin's gap lasts: the missing transactions
// may be gone from its outbox for good (this site needs an initial copy).
func (a *Applier) noteGap(ctx context.Context, im inMsg) {
	a.askResend(ctx, im.origin)
	if a.gapSince == nil {
		a.gapSince = map[casualdb.SiteID]time.Time{}
	}
	since, ok := a.gapSince[im.origin]
	switch {
	case !ok:
		a.gapSince[im.origin] = time.Now()
	case !since.IsZero() && time.Since(since) > 30*time.Second:
		a.log.Warn("transactions of an origin are missing for 30s; apply of that origin waits", "origin", im.origin,
			"expected_seq", a.progress[im.origin].Seq+1, "got_seq", im.seq)
		a.gapSince[im.origin] = time.Time{} // warned
	}
}

// policy returns the delete policy of table.
func (a *Applier) policy(table string) conflict.DeletePolicy {
	if p, ok := a.cfg.Policies[table]; ok {
		return p
	}
	return a.cfg.DeletePolicy
}

// missingDep returns a transaction that im causally depends on and that is
// not applied here yet: its site and commit LSN there.
func (a *Applier) missingDep(im inMsg) (casualdb.SiteID, uint64, bool) {
	for site, lsn := range im.tx.Deps {
		if site == a.cfg.Site || site == im.origin {
			continue
		}
		if a.progress[site].LSN < lsn {
			return site, lsn, true
		}
	}
	return "", 0, false
}

// noteDependency warns, once, when an origin waits for a dependency for
// long: the site it depends on may be unreachable, or unknown here.
func (a *Applier) noteDependency(im inMsg, site casualdb.SiteID, lsn uint64) {
	if a.depSince == nil {
		a.depSince = map[casualdb.SiteID]time.Time{}
	}
	since, ok := a.depSince[im.origin]
	switch {
	case !ok:
		a.depSince[im.origin] = time.Now()
		a.log.Debug("transaction waits for a causal dependency", "origin", im.origin, "seq", im.seq, "needs", site, "lsn", casualdb.FormatLSN(lsn))
	case !since.IsZero() && time.Since(since) > 30*time.Second:
		a.log.Warn("transactions of an origin wait for 30s for what they depend on from another site; apply of that origin waits",
			"origin", im.origin, "seq", im.seq, "needs", site, "needs_lsn", casualdb.FormatLSN(lsn),
			"applied_lsn", casualdb.FormatLSN(a.progress[site].LSN))
		a.depSince[im.origin] = time.Time{} // warned
	}
}

// Hinter keeps what this site receives as hints for sites that are down.
// The sidecar implements it with the ring and gossip membership.
type Hinter interface {
	// Hint is called, never concurrently, for every transaction taken from
	// the inbox (duplicates included), before it is applied; it returns
	// once any hint it keeps is durable. An error hands the transaction
	// back to the inbox.
	Hint(ctx context.Context, r Received) error
}

// Received is a transaction as it arrived from its origin.
type Received struct {
	Origin casualdb.SiteID
	Epoch  string
	Seq    uint64
	Tx     *casualdb.Tx
	Data   []byte // encoded as shipped
}

type admission int

const (
	admitApply admission = iota
	admitDuplicate
	admitGap
)

// admit tells a new transaction from a duplicate and from one that arrived
// before its predecessor.
func (a *Applier) admit(im inMsg) admission {
	p, ok := a.progress[im.origin]
	if ok && im.tx.LSN <= p.LSN {
		return admitDuplicate
	}
	switch {
	case ok && p.Epoch == im.epoch && im.seq > p.Seq+1:
		return admitGap
	case !ok && im.seq > 1:
		return admitGap
	}
	return admitApply
}

func hasTruncate(tx *casualdb.Tx) bool {
	for _, c := range tx.Changes {
		if c.Op == casualdb.OpTruncate {
			return true
		}
	}
	return false
}

// decodeMsg returns the transactions m carries. What does not decode is
// parked (and counted) rather than applied: a whole message whose headers
// or framing are garbled, or one transaction of a bundle.
func (a *Applier) decodeMsg(ctx context.Context, m *casualdb.InboxMsg, d *delivery) ([]inMsg, error) {
	if m.Err != nil {
		return nil, a.parkGarbled(ctx, m, nil, m.Err)
	}
	now := time.Now()
	out := make([]inMsg, 0, len(m.Txs))
	for i := range m.Txs {
		e := &m.Txs[i]
		if e.Err != nil {
			if err := a.parkGarbled(ctx, m, e, e.Err); err != nil {
				return nil, err
			}
			continue
		}
		out = append(out, inMsg{d: d, origin: m.Origin, epoch: m.Epoch, seq: e.Seq, received: now, data: e.Data, tx: e.Tx})
	}
	if len(out) == 0 && len(m.Txs) > 0 {
		_ = m.Ack() // every transaction in it is parked
	}
	return out, nil
}

// parkGarbled parks e, a transaction of m that does not decode, or all of m
// (acknowledged then) when e is nil, and counts it.
func (a *Applier) parkGarbled(ctx context.Context, m *casualdb.InboxMsg, e *casualdb.InboxTx, cause error) error {
	p := meta.Parked{Origin: m.Origin, Reason: cause.Error()}
	if e != nil {
		p.Seq, p.Payload = e.Seq, e.Data
	} else {
		p.Seq, p.LSN, p.Payload = m.Seq, m.LSN, m.Data
	}
	if err := meta.Park(ctx, a.main, p); err != nil {
		_ = m.NakWithDelay(time.Second)
		return fmt.Errorf("apply: park garbled message: %w", err)
	}
	a.log.Warn("parked a message that does not decode", "origin", p.Origin, "seq", p.Seq, "err", cause)
	a.count(func(s *Stats) { s.Parked++; s.Garbled++ })
	if e == nil {
		_ = m.Ack()
	}
	return nil
}

// carefulRun bounds the transactions of a careful retry: one statement and
// a savepoint per change, every row of the run locked meanwhile. The rest of
// a longer run goes back to be applied after it.
const carefulRun = 256

// applyRun applies consecutive transactions of one origin in one local
// transaction, retrying what a race with local writers makes fail; a retry
// applies at most carefulRun of them. It returns how many it applied (a
// prefix of run); 0 when none could be applied now (the caller keeps them
// for later).
func (a *Applier) applyRun(ctx context.Context, run []inMsg) (applied int, err error) {
	origin := run[0].origin
	var lastErr error
	for attempt := 0; attempt < 8; attempt++ {
		if ctx.Err() != nil {
			return 0, ctx.Err()
		}
		if attempt > 0 && len(run) > carefulRun {
			run = run[:carefulRun]
		}
		conn, err := a.originConn(ctx, origin)
		if err != nil {
			lastErr = err
			break
		}
		res, err := a.applyTxs(ctx, conn, run, attempt > 0)
		if err == nil {
			for tbl := range res.raised {
				a.vcache.dropTable(tbl)
			}
			for k, rv := range res.recorded {
				a.vcache.put(k, rv)
			}
			last := run[len(run)-1]
			now := time.Now()
			if a.cfg.ObserveDelay != nil {
				for _, im := range run {
					a.cfg.ObserveDelay(origin, "received", im.received.Sub(im.tx.CommitTime))
					a.cfg.ObserveDelay(origin, "applied", now.Sub(im.tx.CommitTime))
				}
			}
			a.count(func(s *Stats) {
				s.Applied += uint64(len(run))
				s.Changes += res.changes
				s.Conflicts += res.conflicts
				s.Parked += res.parked
				o := s.Origins[origin]
				o.Applied += uint64(len(run))
				o.Seq, o.Epoch = last.seq, last.epoch
				o.LastCommit = last.tx.CommitTime
				o.LastApplied = now
				s.Origins[origin] = o
			})
			return len(run), nil
		}
		lastErr = err
		if conn.IsClosed() || !isRetryable(err) {
			a.dropConn(origin)
		}
		a.log.Debug("apply attempt failed; retrying", "origin", origin, "attempt", attempt, "err", err)
		select {
		case <-time.After(time.Duration(attempt*attempt) * 10 * time.Millisecond):
		case <-ctx.Done():
			return 0, ctx.Err()
		}
	}
	// The caller keeps the run and tries again; forget the optimistic
	// progress.
	a.truncsValid = false
	if err := a.reloadProgress(ctx); err != nil {
		return 0, err
	}
	a.log.Error("apply failed; will retry", "origin", origin, "txs", len(run), "err", lastErr)
	return 0, nil
}

func (a *Applier) reloadProgress(ctx context.Context) error {
	p, err := meta.LoadProgress(ctx, a.main)
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	a.progress = p
	return nil
}

func (a *Applier) originConn(ctx context.Context, origin casualdb.SiteID) (*pgx.Conn, error) {
	if c, ok := a.conns[origin]; ok && !c.IsClosed() {
		return c, nil
	}
	c, err := connectOrigin(ctx, a.cfg.DSN, origin)
	if err != nil {
		return nil, err
	}
	a.conns[origin] = c
	return c, nil
}

func (a *Applier) dropConn(origin casualdb.SiteID) {
	if c, ok := a.conns[origin]; ok {
		c.Close(context.Background())
		delete(a.conns, origin)
	}
}

// errRace is returned when a local write raced with the apply transaction
// in a way only a retry resolves.
var errRace = errors.New("local write raced with apply")
