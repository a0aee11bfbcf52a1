package node

import (
	"context"
	"slices"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// wDurable returns the outbox sequence up to which every transaction is
// held by at least w sites: this one, plus every peer whose inbox has
// acknowledged it (every site holds every row, so any w sites count).
func wDurable(w int, last uint64, floors []uint64) uint64 {
	if w <= 1 {
		return last
	}
	if len(floors) < w-1 {
		return 0
	}
	s := slices.Clone(floors)
	slices.Sort(s)
	slices.Reverse(s)
	return min(s[w-2], last)
}

// durabilityLoop keeps the W-durability watermark up to date, which
// casualdb.wait_durable polls: the LSN below which every local transaction
// is W-durable. It wakes when capture's processed position moves or a peer
// acknowledges something (and once a second), and saves at most every
// durableEvery: an idle site does nothing at all. The LSN is an unlogged
// sequence's value, so a save writes no WAL (and does not move the
// processed position in turn); see meta's durabilityDDL.
func (s *Node) durabilityLoop(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(s.cfg.Database.DSN)
	if err != nil {
		return err
	}
	cfg.RuntimeParams["application_name"] = "casualdb-durability"
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	var saved, savedSeq uint64
	var savedAt time.Time
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		advanced := s.capturer.Advanced()
		if conn != nil && conn.IsClosed() {
			// The database may have restarted (its unlogged watermark
			// reset): save again even if nothing moved.
			saved = 0
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		lsn, seq, ok := s.computeDurable(qctx, savedSeq)
		if ok && lsn > saved {
			every := durableEvery
			if seq == savedSeq {
				// Only WAL that was not replicated moved (apply's, say): a
				// waiter's own transaction is not among it.
				every = durableIdleEvery
			}
			if wait := every - time.Since(savedAt); wait > 0 {
				// Saved a moment ago: save again shortly with what is
				// known then.
				cancel()
				select {
				case <-time.After(wait):
					continue
				case <-ctx.Done():
					return nil
				}
			}
			if conn == nil || conn.IsClosed() {
				if conn, err = pgx.ConnectConfig(qctx, cfg); err != nil {
					s.log.Debug("durability watermark: connect", "err", err)
					conn = nil
				}
			}
			if conn != nil {
				var err error
				if saved == 0 {
					// The site and W first, and after a reconnection (a
					// restarted database lost the row and the sequence);
					// then the LSN alone.
					err = meta.SaveDurability(qctx, conn, casualdb.SiteID(s.cfg.Site), s.cfg.Cluster.W, lsn)
				} else {
					err = meta.SaveDurableLSN(qctx, conn, lsn)
				}
				if err != nil {
					s.log.Debug("durability watermark", "err", err)
				} else {
					saved, savedSeq, savedAt = lsn, seq, time.Now()
					s.mu.Lock()
					s.durableSeq, s.durableLSN = seq, lsn
					s.mu.Unlock()
				}
			}
		}
		cancel()
		select {
		case <-advanced:
		case <-s.durableWake:
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
	}
}

// durableEvery is the shortest interval between two saves of the
// watermark when local transactions became W-durable; durableIdleEvery when
// only other WAL moved.
const (
	durableEvery     = 10 * time.Millisecond
	durableIdleEvery = 100 * time.Millisecond
)

// wakeDurability tells the durability loop that a peer acknowledged
// something; it never blocks.
func (s *Node) wakeDurability() {
	select {
	case s.durableWake <- struct{}{}:
	default:
	}
}

// computeDurable computes the watermark and the W-durable outbox sequence;
// known is a sequence already known to be W-durable. It reads capture's
// processed position before its outbox tail, and what each peer holds from
// its shipper's memory.
func (s *Node) computeDurable(ctx context.Context, known uint64) (lsn, seq uint64, ok bool) {
	st := s.capturer.Stats() // reads Processed before LastSeq
	processed, last := st.Processed, st.LastSeq
	if last <= known {
		return processed, last, processed > 0
	}
	var floors []uint64
	for _, p := range s.peerList() {
		if sh := s.shipper(p); sh != nil {
			floors = append(floors, sh.Acked())
		}
	}
	seq = wDurable(s.cfg.Cluster.W, last, floors)
	if seq >= last {
		return processed, seq, processed > 0
	}
	first, ok := s.capturer.CommitLSN(seq + 1)
	if !ok {
		// Older than capture remembers: ask the outbox.
		var err error
		first, ok, err = s.outbox.LSN(ctx, seq+1)
		if err != nil || !ok || first == 0 {
			s.log.Debug("durability watermark: first transaction not yet durable", "seq", seq+1, "found", ok, "err", err)
			return 0, 0, false
		}
	}
	return min(first-1, processed), seq, true
}
