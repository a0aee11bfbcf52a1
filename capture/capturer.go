package capture

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"golang.org/x/sync/errgroup"
)

// Outbox stores captured transactions durably and in order. It is the
// site's own JetStream stream; *ship.Outbox implements it.
type Outbox interface {
	// Publish starts storing txs, numbered consecutively (Seq), in order,
	// as messages right after message afterMsg, and returns how many
	// messages that takes without waiting; wait returns once every one is
	// durable, or with the first that was refused, in which case none after
	// it is stored.
	Publish(ctx context.Context, txs []*casualdb.Tx, afterMsg uint64) (msgs uint64, wait func(context.Context) error, err error)
	// Last returns the sequence and commit LSN of the newest stored tx and
	// the sequence of its message (transaction zeros when empty).
	Last(ctx context.Context) (lastTx, lastLSN, lastMsg uint64, err error)
	// Since returns up to max stored txs with sequence above after, in
	// order, with Seq set, and the sequence of the message holding the
	// last of them.
	Since(ctx context.Context, after uint64, max int) ([]*casualdb.Tx, uint64, error)
}

// DefaultMaxBatch is Config.MaxBatch's default.
const DefaultMaxBatch = 256

// DefaultLinger is the Linger the sidecar uses by default (node's
// capture.linger): at 1,000 tx/s on the benchmark's machine, 1 ms cut the
// CPU of the sidecars and PostgreSQL servers by about a tenth and the lag's
// p99 to a fraction, for a p50 about as before (docs/performance.md).
const DefaultLinger = time.Millisecond

// DefaultPublication is Config.Publication's default.
const DefaultPublication = "casualdb"

// Config configures a Capturer.
type Config struct {
	// Site is this site's name. Required.
	Site casualdb.SiteID
	// DSN is the local PostgreSQL connection string. Required.
	DSN string
	// Slot is the logical replication slot. Default "casualdb_<site>".
	Slot string
	// Publication lists the replicated tables. Default DefaultPublication.
	Publication string
	// Outbox receives captured transactions. Required.
	Outbox Outbox
	// StatusInterval is how often the slot's position is confirmed. Default 1s.
	StatusInterval time.Duration
	// MaxBatch is the most transactions versioned and appended at once.
	// Default DefaultMaxBatch (256).
	MaxBatch int
	// Linger, when positive, lets a small batch wait that long for more
	// transactions while they come in a steady stream (see shouldLinger):
	// every later stage (the outbox, each shipper, each peer's inbox and
	// apply) pays per batch, so at a modest load fewer, larger batches
	// cost far less CPU, for at most Linger more latency. 0: none.
	Linger time.Duration
	// MaxInflight is how many batches may be in the outbox's hands, or
	// waiting for their versions to be recorded, while the next ones are
	// versioned. Default 8.
	MaxInflight int
	// VersionCache is how many recorded row versions capture keeps in
	// memory (see versionCache); about 300 bytes each. Default 100000;
	// negative: none (every local write reads its row's version from the
	// database).
	VersionCache int
	// Counters lists, by table (schema.name), the counter columns: changes
	// carry how much they moved them (casualdb.Change.Deltas). The table
	// needs REPLICA IDENTITY FULL so that updates carry the old values.
	Counters map[string][]string
	// MergeColumns lists the tables (schema.name) whose columns merge one
	// by one: changes carry the version of every column. They need
	// REPLICA IDENTITY FULL to tell which columns an update wrote.
	MergeColumns map[string]bool
	// Logger; default slog.Default().
	Logger *slog.Logger
	// ObserveDelay, when set, is told for every local transaction how long
	// after its commit it reached a stage (for metrics): StageDecoded (the
	// reader holds it whole: PostgreSQL's decoding and the slot's stream)
	// and StageCaptured (durable in the outbox).
	ObserveDelay func(stage string, d time.Duration)
}

// Stats are capture's counters since start.
type Stats struct {
	Captured uint64 // local transactions appended to the outbox
	// Informing counts those of them that change more than heartbeat rows
	// (meta.OnlyHeartbeat): after them the site owes its peers a heartbeat,
	// which tells them the newest sequence (a lost last transaction shows
	// as a gap).
	Informing uint64
	Followed  uint64 // transactions written by apply, seen and not shipped
	Processed uint64 // WAL position up to which every local write is versioned
	LastSeq   uint64 // newest outbox sequence
	// CounterFallbacks counts changes of counter columns shipped as plain
	// values because their deltas could not be computed (no old row, or a
	// value that is not a finite decimal).
	CounterFallbacks uint64
	// VersionLookups counts the rows whose current version capture needed;
	// VersionMisses those of them the version cache did not hold (read
	// from the database).
	VersionLookups, VersionMisses uint64
}

// Capturer reads the local slot into the outbox. Run it once; it stops when
// its context is cancelled or on the first error (the supervisor restarts).
type Capturer struct {
	cfg Config
	log *slog.Logger

	flushed   atomic.Uint64 // slot position safe to confirm
	captured  atomic.Uint64
	informing atomic.Uint64 // see Stats.Informing
	followed  atomic.Uint64
	lastSeq   atomic.Uint64
	processed atomic.Uint64
	noDeltas  atomic.Uint64
	sent      atomic.Uint64 // the last batch the versioner handed on
	truncGen  atomic.Uint64 // local truncations recorded

	cacheLookups, cacheMisses atomic.Uint64

	nudgeMu   sync.Mutex
	nudgeConn *pgx.Conn // commits an empty transaction to flush WAL; see nudge

	// appliedFrom is, per site, the commit LSN there of the last of its
	// transactions that apply committed here before the WAL position
	// the versioner has reached: the dependencies of the next local
	// transaction. The versioner's goroutine only.
	appliedFrom map[casualdb.SiteID]uint64

	// cacheMu guards cache, which the versioner and the recorder share.
	cacheMu sync.Mutex
	cache   *versionCache

	recordNow chan struct{} // asks the recorder to record what waits, now

	mu       sync.Mutex
	recent   [recentLSNs]seqLSN // the outbox sequence and commit LSN of the latest transactions, by seq modulo the size
	advanced chan struct{}      // closed and replaced whenever processed moves
	appended uint64             // the last batch the outbox holds
	recorded uint64             // the last batch the recorder recorded
	recordCh chan struct{}      // closed and replaced whenever recorded moves
	rd       *reader
	inflight map[uint32]*applyTx // apply transactions committing, or committed and not yet met in the WAL
}

// New validates cfg and returns a Capturer.
func New(cfg Config) (*Capturer, error) {
	if cfg.Site == "" {
		return nil, fmt.Errorf("%w: capture: site is required", casualdb.ErrConfig)
	}
	if cfg.DSN == "" {
		return nil, fmt.Errorf("%w: capture: dsn is required", casualdb.ErrConfig)
	}
	if cfg.Outbox == nil {
		return nil, fmt.Errorf("%w: capture: outbox is required", casualdb.ErrConfig)
	}
	if cfg.Slot == "" {
		cfg.Slot = "casualdb_" + string(cfg.Site)
	}
	if cfg.Publication == "" {
		cfg.Publication = DefaultPublication
	}
	if cfg.StatusInterval <= 0 {
		cfg.StatusInterval = time.Second
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.MaxInflight <= 0 {
		cfg.MaxInflight = 8
	}
	if cfg.VersionCache == 0 {
		cfg.VersionCache = 100000
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Capturer{cfg: cfg, log: cfg.Logger.With("component", "capture"), advanced: make(chan struct{}), recordCh: make(chan struct{}),
		recordNow: make(chan struct{}, 1),
		inflight:  map[uint32]*applyTx{}}, nil
}

// Stats returns a snapshot of the counters.
func (c *Capturer) Stats() Stats {
	// Processed is read before LastSeq: every transaction at or below that
	// position is then at or below LastSeq (the W-durability watermark relies
	// on it).
	return Stats{Captured: c.captured.Load(), Informing: c.informing.Load(), Followed: c.followed.Load(), Processed: c.processed.Load(), LastSeq: c.lastSeq.Load(),
		CounterFallbacks: c.noDeltas.Load(), VersionLookups: c.cacheLookups.Load(), VersionMisses: c.cacheMisses.Load()}
}

// Run captures until ctx is done or an error occurs.
func (c *Capturer) Run(ctx context.Context) error {
	conn, err := c.connect(ctx, "casualdb-capture", meta.KeyLookupParams)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	recConn, err := c.connect(ctx, "casualdb-capture-record", nil)
	if err != nil {
		return err
	}
	defer recConn.Close(context.Background())
	catConn, err := c.connect(ctx, "casualdb-capture-catalog", nil)
	if err != nil {
		return err
	}
	defer catConn.Close(context.Background())
	replCfg, err := pgconn.ParseConfig(c.cfg.DSN)
	if err != nil {
		return fmt.Errorf("capture: parse dsn: %w", err)
	}
	replCfg.RuntimeParams["replication"] = "database"
	replCfg.RuntimeParams["application_name"] = "casualdb-capture-slot"
	for k, v := range casualdb.CanonicalParams {
		replCfg.RuntimeParams[k] = v
	}
	replConn, err := pgconn.ConnectConfig(ctx, replCfg)
	if err != nil {
		return fmt.Errorf("capture: open replication connection: %w", err)
	}
	defer replConn.Close(context.Background())

	skipUpTo, lastMsg, err := c.recover(ctx, conn)
	if err != nil {
		return err
	}
	v := &versioner{c: c, conn: conn, lastSeq: c.lastSeq.Load(), lastMsg: lastMsg}
	if v.truncs, err = meta.LoadTruncations(ctx, conn); err != nil {
		return err
	}
	// What apply has committed so far: the transactions the slot will
	// stream again after a restart may get a few more dependencies than
	// they had, which is safe (none of those can depend on them: they
	// were not shipped yet).
	progress, err := meta.LoadProgress(ctx, conn)
	if err != nil {
		return fmt.Errorf("capture: %w", err)
	}
	c.appliedFrom = map[casualdb.SiteID]uint64{}
	for site, p := range progress {
		c.appliedFrom[site] = p.LSN
	}
	// A fresh cache and pipeline each run: a failed run may have versioned
	// transactions that never reached the outbox.
	c.cacheMu.Lock()
	c.cache = newVersionCache(c.cfg.VersionCache)
	c.cacheMu.Unlock()
	c.mu.Lock()
	c.recorded, c.appended = 0, 0
	c.sent.Store(0)
	c.mu.Unlock()

	ch := make(chan decodedTx, 4*c.cfg.MaxBatch)
	published := make(chan *batch, c.cfg.MaxInflight)
	appended := make(chan *batch, c.cfg.MaxInflight)
	v.out = published
	rd := &reader{c: c, out: ch, conn: replConn, catConn: catConn, wakeCh: make(chan struct{}, 1)}
	rd.dec = newDecoder(rd, c.cfg.Counters, c.cfg.MergeColumns, &c.noDeltas)
	c.mu.Lock()
	c.rd = rd
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		c.rd = nil
		c.mu.Unlock()
	}()

	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return rd.run(gctx, 0, skipUpTo) })
	g.Go(func() error { return v.run(gctx, ch) })
	g.Go(func() error { return (&appender{c: c, in: published, out: appended}).run(gctx) })
	g.Go(func() error { return (&recorder{c: c, conn: recConn, in: appended}).run(gctx) })
	return g.Wait()
}

// connect opens a normal connection to the local database with the given
// session settings.
func (c *Capturer) connect(ctx context.Context, name string, params map[string]string) (*pgx.Conn, error) {
	cfg, err := pgx.ParseConfig(c.cfg.DSN)
	if err != nil {
		return nil, fmt.Errorf("capture: parse dsn: %w", err)
	}
	cfg.RuntimeParams["application_name"] = name
	for k, v := range params {
		cfg.RuntimeParams[k] = v
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("capture: connect: %w", err)
	}
	return conn, nil
}

// recover writes the metadata of transactions that reached the outbox before
// a crash but whose versions were not recorded, and returns the commit LSN
// of the newest outbox entry: the reader skips what is already there.
func (c *Capturer) recover(ctx context.Context, conn *pgx.Conn) (skipUpTo, lastMsg uint64, err error) {
	st, err := meta.LoadCaptureState(ctx, conn, c.cfg.Site)
	if err != nil {
		return 0, 0, err
	}
	lastSeq, lastLSN, lastMsg, err := c.cfg.Outbox.Last(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("capture: read outbox tail: %w", err)
	}
	// An outbox trimmed empty still numbers transactions on from what was
	// recorded.
	lastSeq = max(lastSeq, st.OutboxSeq)
	c.lastSeq.Store(lastSeq)
	for st.OutboxSeq < lastSeq {
		txs, msg, err := c.cfg.Outbox.Since(ctx, st.OutboxSeq, c.cfg.MaxBatch)
		if err != nil {
			return 0, 0, fmt.Errorf("capture: re-read outbox after %d: %w", st.OutboxSeq, err)
		}
		if len(txs) == 0 {
			break // purged: versions were recorded before purging
		}
		versions, truncs := recordedVersions(txs)
		last := txs[len(txs)-1]
		st = meta.CaptureState{OutboxSeq: last.Seq, LSN: last.LSN, OutboxMsg: msg}
		if err := c.saveMeta(ctx, conn, versions, truncs, st); err != nil {
			return 0, 0, err
		}
		c.log.Info("recovered version metadata from outbox", "through_seq", last.Seq, "txs", len(txs))
	}
	// An outbox trimmed empty (every peer had everything) has no last LSN:
	// what capture recorded says how far it got. Without it, the slot
	// (confirmed only every StatusInterval) would send those transactions
	// again and they would be appended a second time under new sequences,
	// which the peers' inboxes drop as duplicates by id and then wait for.
	// Trim never purges past what is recorded, so st.LSN covers it.
	lastLSN = max(lastLSN, st.LSN)
	if lastLSN > 0 {
		c.flushed.Store(lastLSN)
	}
	return lastLSN, lastMsg, nil
}

// recordedVersions lists the metadata that txs (already versioned) imply.
func recordedVersions(txs []*casualdb.Tx) (map[meta.RowKey]meta.RowVersion, map[string]casualdb.Version) {
	vs := map[meta.RowKey]meta.RowVersion{}
	truncs := map[string]casualdb.Version{}
	for _, tx := range txs {
		for _, ch := range tx.Changes {
			if ch.Op == casualdb.OpTruncate {
				truncs[ch.Table] = ch.Version
				for k := range vs {
					if k.Table == ch.Table {
						delete(vs, k)
					}
				}
				continue
			}
			k := meta.RowKey{Table: ch.Table, Key: casualdb.KeyString(ch.Key)}
			rv := meta.RowVersion{Version: ch.Version, Deleted: ch.Op == casualdb.OpDelete, Floor: ch.Floor, Columns: ch.Columns, Claims: ch.Claims, OriginLSN: tx.LSN}
			if !rv.Deleted {
				rv.Xmin = tx.Xid
			}
			// The deletes merged into the floor that these transactions
			// made (the database joins them with those it holds).
			if len(rv.Floor) > 0 {
				rv.FloorLSNs = vs[k].FloorLSNs
				if rv.Deleted {
					rv.FloorLSNs = conflict.JoinFloorLSNs(rv.FloorLSNs, map[casualdb.SiteID]uint64{tx.Origin: tx.LSN})
				}
			}
			vs[k] = rv
		}
	}
	return vs, truncs
}

// saveMeta records versions, truncation markers and the capture state in
// one transaction sent in one round trip.
func (c *Capturer) saveMeta(ctx context.Context, conn *pgx.Conn, vs map[meta.RowKey]meta.RowVersion, truncs map[string]casualdb.Version, st meta.CaptureState) error {
	var b meta.Batch
	for tbl, v := range truncs {
		if err := meta.SaveTruncation(ctx, &b, tbl, v); err != nil {
			return err
		}
	}
	// Apply may have written newer versions of these rows meanwhile.
	if err := meta.SaveNewerVersions(ctx, &b, vs); err != nil {
		return err
	}
	if err := meta.SaveCaptureState(ctx, &b, c.cfg.Site, st); err != nil {
		return err
	}
	if err := b.Send(ctx, conn); err != nil {
		return fmt.Errorf("save %d versions, %d truncations and the capture state: %w", len(vs), len(truncs), err)
	}
	if len(truncs) > 0 {
		c.truncGen.Add(1) // apply reads the markers again
	}
	return nil
}

// deps copies appliedFrom for a local transaction (nil when empty).
func (c *Capturer) deps() map[casualdb.SiteID]uint64 {
	var out map[casualdb.SiteID]uint64
	for site, lsn := range c.appliedFrom {
		if site == c.cfg.Site || lsn == 0 {
			continue
		}
		if out == nil {
			out = make(map[casualdb.SiteID]uint64, len(c.appliedFrom))
		}
		out[site] = lsn
	}
	return out
}

// columnStamps returns the version of every column of the row after ch:
// ch's for the columns it wrote (all of them for an insert, or when the
// decoder could not tell), the earlier ones (before; beforeRow when the row
// had none recorded) for the others.
func columnStamps(rel casualdb.Relation, ch *casualdb.Change, before map[string]casualdb.Stamp, beforeRow casualdb.Stamp) map[string]casualdb.Stamp {
	out := make(map[string]casualdb.Stamp, len(rel.Columns))
	for _, col := range rel.Columns {
		wrote := ch.Op == casualdb.OpInsert || ch.Changed == nil || ch.Changed[col.Name] || beforeRow == (casualdb.Stamp{})
		switch s, ok := before[col.Name]; {
		case wrote:
			out[col.Name] = ch.Version.Stamp()
		case ok:
			out[col.Name] = s
		default:
			out[col.Name] = beforeRow
		}
	}
	return out
}

// recentLSNs is how many (sequence, LSN) pairs CommitLSN remembers.
const recentLSNs = 1 << 14

type seqLSN struct{ seq, lsn uint64 }

// noteAppended remembers the commit LSNs of txs, stored in the outbox.
func (c *Capturer) noteAppended(txs []*casualdb.Tx) {
	c.mu.Lock()
	for _, tx := range txs {
		c.recent[tx.Seq%recentLSNs] = seqLSN{tx.Seq, tx.LSN}
	}
	c.mu.Unlock()
}

// CommitLSN returns the commit LSN of the transaction at outbox sequence
// seq, if it is among the latest ones capture appended.
func (c *Capturer) CommitLSN(seq uint64) (uint64, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e := c.recent[seq%recentLSNs]; e.seq == seq && seq != 0 {
		return e.lsn, true
	}
	return 0, false
}

// TruncationGen changes whenever capture has recorded a local truncation
// marker in the database.
func (c *Capturer) TruncationGen() uint64 { return c.truncGen.Load() }

// Advanced returns a channel that is closed the next time the processed
// position moves.
func (c *Capturer) Advanced() <-chan struct{} {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.advanced
}

// markRecorded notes that the recorder has recorded every batch up to gen.
func (c *Capturer) markRecorded(gen uint64) {
	c.mu.Lock()
	if gen > c.recorded {
		c.recorded = gen
		close(c.recordCh)
		c.recordCh = make(chan struct{})
	}
	c.mu.Unlock()
}

// markAppended notes that the outbox holds every batch up to gen.
func (c *Capturer) markAppended(gen uint64) {
	c.mu.Lock()
	c.appended = max(c.appended, gen)
	c.mu.Unlock()
}

// recordThrough asks the recorder to record now and returns once it has
// recorded every batch up to gen.
func (c *Capturer) recordThrough(ctx context.Context, gen uint64) error {
	select {
	case c.recordNow <- struct{}{}:
	default:
	}
	for {
		c.mu.Lock()
		done, ch := c.recorded >= gen, c.recordCh
		c.mu.Unlock()
		if done {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (c *Capturer) advance(lsn uint64) {
	c.mu.Lock()
	if lsn > c.processed.Load() {
		c.processed.Store(lsn)
		c.flushed.Store(lsn)
		close(c.advanced)
		c.advanced = make(chan struct{})
	}
	c.mu.Unlock()
}

// Close releases the nudge connection; Run releases everything else.
func (c *Capturer) Close() {
	c.nudgeMu.Lock()
	defer c.nudgeMu.Unlock()
	if c.nudgeConn != nil {
		c.nudgeConn.Close(context.Background())
		c.nudgeConn = nil
	}
}
