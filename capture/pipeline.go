package capture

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/conflict"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// The pipeline after the reader has three stages, each a goroutine, so that
// versioning the next batch, the outbox storing the one before and the
// database recording older ones overlap instead of taking turns (in turns
// they capped capture at about 5,000 transactions a second on two cores, far
// below what the origin commits):
//
//	versioner: versions each local write against the version cache (one
//	           query for the rows it misses), stamps dependencies, and
//	           publishes the batch to the outbox without waiting;
//	appender:  waits until the outbox holds each batch, then advances the
//	           processed position (which the slot confirms and apply waits
//	           for): the outbox is the source of truth;
//	recorder:  records the versions in casualdb.row_version, lazily: every
//	           recordEvery transactions or recordDelay after the oldest
//	           unrecorded one, in one transaction for all of them.
//
// Until it is recorded, a version lives in the cache as pending, and apply
// reads it from there (Capturer.Pending); what the database holds is at
// most recordDelay older. Recording per transaction, as before, cost the
// origin's database a transaction per local transaction at low load.
//
// At most MaxInflight batches sit between two stages. Order is kept
// throughout: the outbox refuses a message that does not follow the last
// one it stored, and each stage takes batches in the order they were
// published. A truncation drains the pipeline (everything recorded) before
// and after it is versioned: it reads and replaces every version of its
// table.

// recordEvery and recordDelay bound how long versions wait to be recorded
// in the database (see above).
const (
	recordEvery = 2048
	recordDelay = 20 * time.Millisecond
)

// batch is one group of decoded transactions on its way through the
// pipeline.
type batch struct {
	gen   uint64 // its number in this run
	local []*casualdb.Tx
	wait  func(context.Context) error // the outbox's Publish of local
	keys  []meta.RowKey               // rows local wrote, for the cache
	msg   uint64                      // the outbox message holding the last of local
	// truncs are the truncation markers local raised.
	truncs map[string]casualdb.Version
	end    uint64 // every transaction ending at or before it is in the batch or earlier
	// recordFirst makes the appender wait until the batch is recorded
	// before it advances past it: apply reads truncation markers from the
	// database only.
	recordFirst bool
}

// versioner is the pipeline's first stage (one per Run).
type versioner struct {
	c       *Capturer
	conn    *pgx.Conn // reads versions the cache misses
	truncs  map[string]casualdb.Version
	out     chan<- *batch
	gen     uint64
	lastSeq uint64 // the outbox sequence of the last transaction published
	lastMsg uint64 // the sequence of the last outbox message published
	// floors holds the collected floors read so far (meta.ScanFloors),
	// joined: a floor only grows.
	floors map[string]casualdb.Version
}

// run takes decoded transactions from in until ctx is done or an error.
func (v *versioner) run(ctx context.Context, in <-chan decodedTx) error {
	defer close(v.out)
	linger := v.c.cfg.Linger
	var timer *time.Timer
	if linger > 0 {
		timer = time.NewTimer(linger)
		timer.Stop()
		defer timer.Stop()
	}
	var last time.Time // when the previous batch was taken
	for {
		var items []decodedTx
		select {
		case d := <-in:
			items = append(items, d)
		case <-ctx.Done():
			return ctx.Err()
		}
		items = v.take(in, items)
		if shouldLinger(len(items), v.c.cfg.MaxBatch, time.Since(last), linger) {
			timer.Reset(linger)
			select {
			case <-timer.C:
			case <-ctx.Done():
				return ctx.Err()
			}
			items = v.take(in, items)
		}
		last = time.Now()
		if err := v.process(ctx, items); err != nil {
			return err
		}
	}
}

// lingerBelow is the batch size from which capture never lingers: the
// stream is fast enough to make batches without waiting.
const lingerBelow = 16

// shouldLinger tells whether a batch of n items (at most maxBatch), taken
// since after the previous one, should wait linger for more: only a small
// batch that is not full, and only in a steady stream (the previous batch
// was taken moments ago), so that a lone transaction on a quiet site is
// never held back.
func shouldLinger(n, maxBatch int, since, linger time.Duration) bool {
	return linger > 0 && n < min(lingerBelow, maxBatch) && since < 4*linger
}

// take adds to items what in holds now, up to MaxBatch.
func (v *versioner) take(in <-chan decodedTx, items []decodedTx) []decodedTx {
	for len(items) < v.c.cfg.MaxBatch {
		select {
		case d := <-in:
			items = append(items, d)
		default:
			return items
		}
	}
	return items
}

// process versions items and hands them on, as one batch or, around a
// truncation, several.
func (v *versioner) process(ctx context.Context, items []decodedTx) error {
	b := &batch{}
	for _, d := range items {
		switch {
		case d.tx == nil:
			b.end = max(b.end, d.watermark)
		case d.applied:
			if err := v.followApplied(ctx, d); err != nil {
				return err
			}
			b.end = max(b.end, d.tx.LSN)
		case hasTruncate(d.tx):
			// Reads the table's greatest version: everything before it
			// must be recorded, and what comes after it must see it
			// recorded.
			if err := v.versionAndSend(ctx, b); err != nil {
				return err
			}
			if err := v.drain(ctx); err != nil {
				return err
			}
			d.tx.Deps = v.c.deps()
			t := &batch{local: []*casualdb.Tx{d.tx}, end: d.tx.LSN, recordFirst: true}
			if err := v.version(ctx, t); err != nil {
				return err
			}
			if err := v.send(ctx, t); err != nil {
				return err
			}
			if err := v.drain(ctx); err != nil {
				return err
			}
			b = &batch{}
		default:
			// What apply had committed before it, in WAL order.
			d.tx.Deps = v.c.deps()
			b.local = append(b.local, d.tx)
			b.end = max(b.end, d.tx.LSN)
		}
	}
	return v.versionAndSend(ctx, b)
}

// versionAndSend versions b's local transactions, if any, and hands b on.
func (v *versioner) versionAndSend(ctx context.Context, b *batch) error {
	if len(b.local) > 0 {
		if err := v.version(ctx, b); err != nil {
			return err
		}
	}
	return v.send(ctx, b)
}

// followApplied handles a transaction that apply wrote: capture waits until
// its commit is visible, takes the versions it recorded into the cache, and
// notes what it applied (the next local transaction depends on it).
func (v *versioner) followApplied(ctx context.Context, d decodedTx) error {
	c := v.c
	w, known, err := c.appliedWrites(ctx, d.tx.Xid)
	if err != nil {
		return err
	}
	switch {
	case !known:
		// Written under a replication origin without apply telling
		// capture what it recorded (a commit whose outcome apply did not
		// learn, or a transaction of an earlier run): the cache cannot
		// know which versions changed.
		if err := v.drain(ctx); err != nil {
			return err
		}
		c.cacheMu.Lock()
		c.cache.clear()
		c.cacheMu.Unlock()
		truncs, err := meta.LoadTruncations(ctx, v.conn)
		if err != nil {
			return fmt.Errorf("capture: %w", err)
		}
		v.truncs = truncs
	case len(w.Truncations) > 0:
		if err := v.drain(ctx); err != nil {
			return err
		}
		fallthrough
	default:
		c.cacheMu.Lock()
		for tbl, tv := range w.Truncations {
			if t, ok := v.truncs[tbl]; !ok || conflict.Less(t, tv) {
				v.truncs[tbl] = tv
			}
			c.cache.dropTable(tbl)
		}
		for k, rv := range w.Versions {
			if p, ok := c.cache.pending[k]; ok {
				// Apply decided against a local version not recorded yet
				// (it read it from Pending): its version is the current
				// one now; the recorder will not overwrite it (it records
				// only over older versions).
				p.rv = rv
				c.cache.pending[k] = p
				continue
			}
			c.cache.put(k, rv)
		}
		c.cacheMu.Unlock()
	}
	c.followed.Add(1)
	if d.from != "" && d.fromLSN > c.appliedFrom[d.from] {
		c.appliedFrom[d.from] = d.fromLSN
	}
	return nil
}

// version gives every change of b's transactions its version.
func (v *versioner) version(ctx context.Context, b *batch) error {
	c := v.c
	b.gen = v.gen + 1
	// The current versions of the rows the batch writes: a snapshot of
	// what the cache holds, and what it does not from the database in one
	// query. A snapshot, because the recorder may move entries meanwhile
	// (a recorded tombstone leaves the cache: read again then, it would be
	// neither in the cache nor among what was loaded, and the row would
	// start a fresh clock).
	var miss []meta.RowKey
	known := map[meta.RowKey]meta.RowVersion{}
	seen := map[meta.RowKey]bool{}
	c.cacheMu.Lock()
	for _, tx := range b.local {
		for _, ch := range tx.Changes {
			if ch.Op == casualdb.OpTruncate {
				continue
			}
			k := meta.RowKey{Table: ch.Table, Key: casualdb.KeyString(ch.Key)}
			if seen[k] {
				continue
			}
			seen[k] = true
			if rv, ok := c.cache.get(k); ok {
				known[k] = rv
			} else {
				miss = append(miss, k)
			}
		}
	}
	c.cacheMu.Unlock()
	loaded, err := v.load(ctx, miss)
	if err != nil {
		return err
	}
	for k, rv := range loaded {
		known[k] = rv
	}
	c.cacheMisses.Add(uint64(len(miss)))
	c.cacheLookups.Add(uint64(len(seen)))

	c.cacheMu.Lock()
	defer c.cacheMu.Unlock()
	// A row's current version: what this batch wrote (pending under its
	// generation, which nothing else touches while it is versioned), else
	// the snapshot; nothing for a row of a table this batch truncated (the
	// truncation removed it).
	lookup := func(k meta.RowKey) (meta.RowVersion, bool) {
		if p, ok := c.cache.pending[k]; ok && p.gen == b.gen {
			return p.rv, true
		}
		if _, ok := b.truncs[k.Table]; ok {
			return meta.RowVersion{}, false
		}
		rv, ok := known[k]
		return rv, ok
	}
	for _, tx := range b.local {
		tx.Origin = c.cfg.Site
		if err := v.versionTx(ctx, tx, lookup, b); err != nil {
			return err
		}
	}
	for k := range seen {
		b.keys = append(b.keys, k)
	}
	v.gen = b.gen
	return nil
}

// load reads the recorded versions of keys and, in the same round trip and
// after them, the collected floors of their tables. After: a key whose
// tombstone collection removed before the versions were read is
// absent from them, and the floor read later includes what that tombstone
// knew (the collection raises the floor in the statement that removes it).
// One small statement per batch that misses the cache, not per row.
func (v *versioner) load(ctx context.Context, keys []meta.RowKey) (map[meta.RowKey]meta.RowVersion, error) {
	if len(keys) == 0 {
		return map[meta.RowKey]meta.RowVersion{}, nil
	}
	var tables []string
	for _, k := range keys {
		if !slices.Contains(tables, k.Table) {
			tables = append(tables, k.Table)
		}
	}
	var b pgx.Batch
	sql, args := meta.VersionsQuery(keys)
	b.Queue(sql, args...)
	b.Queue(meta.FloorsQuery, tables)
	res := v.conn.SendBatch(ctx, &b)
	defer res.Close()
	rows, err := res.Query()
	if err != nil {
		return nil, fmt.Errorf("capture: load row versions: %w", err)
	}
	loaded, err := meta.ScanVersions(rows, len(keys))
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	if rows, err = res.Query(); err != nil {
		return nil, fmt.Errorf("capture: load collected floors: %w", err)
	}
	floors, err := meta.ScanFloors(rows)
	if err != nil {
		return nil, fmt.Errorf("capture: %w", err)
	}
	if err := res.Close(); err != nil {
		return nil, fmt.Errorf("capture: load row versions: %w", err)
	}
	v.floors = conflict.RaiseFloors(v.floors, floors)
	return loaded, nil
}

// versionTx gives every change of tx its version; lookup returns a row's
// current version (the cache holds the ones tx's earlier changes wrote).
// Called with cacheMu held.
func (v *versioner) versionTx(ctx context.Context, tx *casualdb.Tx, lookup func(meta.RowKey) (meta.RowVersion, bool), b *batch) error {
	c := v.c
	at := commitMicros(tx.CommitTime)
	for i := range tx.Changes {
		ch := &tx.Changes[i]
		if ch.Op == casualdb.OpTruncate {
			// Above every version the table holds, so that rows written
			// before the truncate, wherever, lose to it. The pipeline is
			// drained: the database holds every version but those this
			// transaction wrote before the truncate.
			maxHLC, err := meta.MaxHLC(ctx, v.conn, ch.Table)
			if err != nil {
				return fmt.Errorf("capture: %w", err)
			}
			for k, p := range c.cache.pending {
				if k.Table == ch.Table && p.rv.Version.HLC.Compare(maxHLC) > 0 {
					maxHLC = p.rv.Version.HLC
				}
			}
			if t, ok := v.truncs[ch.Table]; ok && t.HLC.Compare(maxHLC) > 0 {
				maxHLC = t.HLC
			}
			ch.Version = casualdb.Version{HLC: conflict.NextHLC(maxHLC, at), Origin: c.cfg.Site, VC: casualdb.VectorClock{}}
			v.truncs[ch.Table] = ch.Version
			if b.truncs == nil {
				b.truncs = map[string]casualdb.Version{}
			}
			b.truncs[ch.Table] = ch.Version
			// Its rows' versions are gone once it is recorded, those this
			// transaction wrote before it included.
			c.cache.dropTable(ch.Table)
			for k := range c.cache.pending {
				if k.Table == ch.Table {
					delete(c.cache.pending, k)
				}
			}
			continue
		}
		k := meta.RowKey{Table: ch.Table, Key: casualdb.KeyString(ch.Key)}
		var (
			prev  *casualdb.Version
			floor casualdb.VectorClock
		)
		rv, ok := lookup(k)
		switch f, collected := v.floors[ch.Table]; {
		case ok:
			prev = &rv.Version
			floor = rv.Floor
		case collected:
			// No version, and the table's tombstones were collected: this
			// row's may have been one of them, which other sites may still
			// hold. Stamp the write above every collected version, with a
			// counter of this site's above the row's old ones; that it saw
			// the collected deletes its transaction's dependencies tell
			// (conflict.SawDeletes).
			prev = conflict.Start(&f, c.cfg.Site)
		}
		// The claims of the row's current values, if it has any: an insert
		// claims every value anew (a key re-used after a delete is a new
		// row), and so does anything written after a truncate superseded
		// the row.
		var prevClaims map[string]casualdb.Claim
		if ok && !rv.Deleted && ch.Op == casualdb.OpUpdate {
			prevClaims = rv.Claims
		}
		if t, ok := v.truncs[ch.Table]; ok && (prev == nil || conflict.Less(*prev, t)) {
			prevClaims = nil
			// The row was (re)written after a truncate that superseded its
			// old version: the new version must exceed the truncate's.
			tv := casualdb.Version{HLC: t.HLC, Origin: t.Origin}
			if prev != nil {
				tv.VC = prev.VC
			}
			prev = &tv
		}
		ch.Version = conflict.Next(prev, c.cfg.Site, at)
		var floorLSNs map[casualdb.SiteID]uint64
		if ok {
			floorLSNs = rv.FloorLSNs
		}
		if ch.Op == casualdb.OpDelete {
			// A floor recorded before its deletes were kept stays unknown.
			if len(floor) == 0 || len(floorLSNs) > 0 {
				floorLSNs = conflict.JoinFloorLSNs(floorLSNs, map[casualdb.SiteID]uint64{c.cfg.Site: tx.LSN})
			}
			floor = conflict.Join(floor, ch.Version.VC)
		}
		ch.Floor = floor
		if c.cfg.MergeColumns[ch.Table] && ch.Op != casualdb.OpDelete {
			var before map[string]casualdb.Stamp
			var beforeRow casualdb.Stamp
			if ok && !rv.Deleted {
				before, beforeRow = rv.Columns, rv.Version.Stamp()
			}
			ch.Columns = columnStamps(tx.Relations[ch.Table], ch, before, beforeRow)
		}
		if len(ch.ClaimColumns) > 0 && ch.Op != casualdb.OpDelete {
			ch.Claims = conflict.NextClaims(prevClaims, claimValues(tx.Relations[ch.Table], ch), ch.Version.Stamp())
		}
		// Later changes to the row see this version.
		nrv := meta.RowVersion{Version: ch.Version, Deleted: ch.Op == casualdb.OpDelete, Floor: floor, Columns: ch.Columns, Claims: ch.Claims, OriginLSN: tx.LSN, FloorLSNs: floorLSNs}
		if !nrv.Deleted {
			nrv.Xmin = tx.Xid
		}
		c.cache.write(k, nrv, b.gen)
	}
	return nil
}

// claimValues returns the values of ch's new row at its claim columns, as
// conflict.NextClaims takes them: hashed, or unknown for an unchanged
// TOASTed value the WAL did not carry (REPLICA IDENTITY not FULL).
func claimValues(rel casualdb.Relation, ch *casualdb.Change) []conflict.ClaimValue {
	out := make([]conflict.ClaimValue, 0, len(ch.ClaimColumns))
	for _, col := range ch.ClaimColumns {
		i := slices.IndexFunc(rel.Columns, func(c casualdb.Column) bool { return c.Name == col })
		switch {
		case i < 0 || i >= len(ch.Values) || ch.Values[i].Unchanged:
			out = append(out, conflict.ClaimValue{Column: col, Unknown: true})
		default:
			out = append(out, conflict.ClaimValue{Column: col, Hash: conflict.ClaimHash(ch.Values[i])})
		}
	}
	return out
}

// send publishes b's transactions to the outbox (without waiting) and hands
// b to the recorder; an empty batch only carries its end position.
func (v *versioner) send(ctx context.Context, b *batch) error {
	if len(b.local) == 0 && b.end == 0 {
		return nil
	}
	if b.gen == 0 {
		v.gen++
		b.gen = v.gen
	}
	if len(b.local) > 0 {
		for i, tx := range b.local {
			tx.Seq = v.lastSeq + uint64(i) + 1
		}
		msgs, wait, err := v.c.cfg.Outbox.Publish(ctx, b.local, v.lastMsg)
		if err != nil {
			return fmt.Errorf("capture: append %d txs to the outbox: %w", len(b.local), err)
		}
		b.wait = wait
		v.lastSeq += uint64(len(b.local))
		v.lastMsg += msgs
		b.msg = v.lastMsg
	}
	select {
	case v.out <- b:
		v.c.sent.Store(b.gen)
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// drain waits until the recorder has recorded every batch sent so far.
func (v *versioner) drain(ctx context.Context) error {
	return v.c.recordThrough(ctx, v.gen)
}

// hasTruncate tells whether tx truncates a table.
func hasTruncate(tx *casualdb.Tx) bool {
	for _, c := range tx.Changes {
		if c.Op == casualdb.OpTruncate {
			return true
		}
	}
	return false
}

// appender is the pipeline's second stage (one per Run).
type appender struct {
	c   *Capturer
	in  <-chan *batch
	out chan<- *batch
}

// run waits for the outbox to hold each batch, in order, and advances.
func (a *appender) run(ctx context.Context) error {
	c := a.c
	defer close(a.out)
	for {
		var b *batch
		select {
		case b = <-a.in:
			if b == nil {
				return ctx.Err()
			}
		case <-ctx.Done():
			return ctx.Err()
		}
		if b.wait != nil {
			if err := b.wait(ctx); err != nil {
				return fmt.Errorf("capture: %w", err)
			}
			appended := time.Now()
			last := b.local[len(b.local)-1]
			c.noteAppended(b.local)
			c.lastSeq.Store(last.Seq)
			c.captured.Add(uint64(len(b.local)))
			c.informing.Add(meta.Informing(b.local...))
			if c.cfg.ObserveDelay != nil {
				for _, tx := range b.local {
					c.cfg.ObserveDelay(StageCaptured, appended.Sub(tx.CommitTime))
				}
			}
		}
		c.markAppended(b.gen)
		select {
		case a.out <- b:
		case <-ctx.Done():
			return ctx.Err()
		}
		if b.recordFirst {
			if err := c.recordThrough(ctx, b.gen); err != nil {
				return err
			}
		}
		if b.end > 0 {
			c.advance(b.end)
		}
	}
}

// recorder is the pipeline's third stage (one per Run).
type recorder struct {
	c    *Capturer
	conn *pgx.Conn // records versions
	in   <-chan *batch
}

// run records batches until in is closed, ctx is done or an error: once
// recordEvery transactions wait, recordDelay after the first of them, or
// at once when the versioner or apply asks (recordThrough).
func (r *recorder) run(ctx context.Context) error {
	c := r.c
	var (
		group []*batch
		txs   int
		timer = time.NewTimer(time.Hour)
		due   <-chan time.Time // set while versions wait
	)
	timer.Stop()
	defer timer.Stop()
	for {
		now := false
		select {
		case b, ok := <-r.in:
			if !ok {
				return ctx.Err()
			}
			group = append(group, b)
			if len(b.local) > 0 && txs == 0 {
				timer.Reset(recordDelay)
				due = timer.C
			}
			txs += len(b.local)
		case <-due:
			now = true
		case <-c.recordNow:
			now = true
		case <-ctx.Done():
			return ctx.Err()
		}
		// Batches without local transactions have nothing to record: they
		// only move the recorded mark, at once.
		if len(group) == 0 || (!now && txs > 0 && txs < recordEvery) {
			continue
		}
		if err := r.record(ctx, group); err != nil {
			return err
		}
		group, txs = group[:0], 0
		timer.Stop()
		due = nil
	}
}

// record writes the versions of group and the capture state in one
// transaction.
func (r *recorder) record(ctx context.Context, group []*batch) error {
	c := r.c
	start := time.Now()
	var local []*casualdb.Tx
	var lastMsg uint64
	for _, b := range group {
		local = append(local, b.local...)
		lastMsg = max(lastMsg, b.msg)
	}
	if len(local) > 0 {
		last := local[len(local)-1]
		// Only what the group wrote is recorded, in order: a truncation
		// supersedes what came before it.
		written, truncs := recordedVersions(local)
		if err := c.saveMeta(ctx, r.conn, written, truncs, meta.CaptureState{OutboxSeq: last.Seq, LSN: last.LSN, OutboxMsg: lastMsg}); err != nil {
			return fmt.Errorf("capture: record versions through outbox seq %d: %w", last.Seq, err)
		}

		c.cacheMu.Lock()
		for _, b := range group {
			c.cache.recorded(b.keys, b.gen)
		}
		c.cacheMu.Unlock()
		c.log.Debug("recorded versions", "batches", len(group), "txs", len(local), "took", time.Since(start),
			"oldest_commit_age", time.Since(local[0].CommitTime))
	}
	c.markRecorded(group[len(group)-1].gen)
	return nil
}
