package main

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

// durabilityLoop keeps casualdb.durability up to date, which
// casualdb.wait_durable polls: the LSN below which every local transaction
// is W-durable. It reads capture's processed position first and the outbox
// tail second, so a transaction appended in between never counts as
// durable. Each save is itself a little WAL, which moves the processed
// position: when nothing new became durable, saves are spaced 100ms apart
// so that an idle site does not write in a loop.
func (s *Sidecar) durabilityLoop(ctx context.Context) error {
	cfg, err := pgx.ParseConfig(s.cfg.Database.DSN)
	if err != nil {
		return err
	}
	var conn *pgx.Conn
	defer func() {
		if conn != nil {
			conn.Close(context.Background())
		}
	}()
	var saved, savedSeq uint64
	var savedAt time.Time
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
		case <-ctx.Done():
			return nil
		}
		qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		lsn, seq, ok := s.computeDurable(qctx, savedSeq)
		if ok && lsn > saved && (seq != savedSeq || time.Since(savedAt) >= 100*time.Millisecond) {
			if conn == nil || conn.IsClosed() {
				if conn, err = pgx.ConnectConfig(qctx, cfg); err != nil {
					s.log.Debug("durability watermark: connect", "err", err)
				}
			}
			if conn != nil {
				if err := meta.SaveDurability(qctx, conn, casualdb.SiteID(s.cfg.Site), s.cfg.Cluster.W, lsn); err != nil {
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
	}
}

// computeDurable computes the watermark and the W-durable outbox sequence;
// known is a sequence already known to be W-durable. It reads capture's
// processed position before its outbox tail (both in memory): when nothing
// was appended past known, no peer need be asked.
func (s *Sidecar) computeDurable(ctx context.Context, known uint64) (lsn, seq uint64, ok bool) {
	st := s.capturer.Stats() // reads Processed before LastSeq
	processed, last := st.Processed, st.LastSeq
	if last <= known {
		return processed, last, processed > 0
	}
	var floors []uint64
	for _, p := range s.peerList() {
		f, err := s.outbox.AckFloor(ctx, p)
		if err != nil {
			s.log.Debug("durability watermark", "err", err)
			return 0, 0, false
		}
		floors = append(floors, f)
	}
	seq = wDurable(s.cfg.Cluster.W, last, floors)
	if seq >= last {
		return processed, seq, processed > 0
	}
	first, found, err := s.outbox.LSN(ctx, seq+1)
	if err != nil || !found || first == 0 {
		s.log.Debug("durability watermark: first transaction not yet durable", "seq", seq+1, "found", found, "err", err)
		return 0, 0, false
	}
	return min(first-1, processed), seq, true
}
