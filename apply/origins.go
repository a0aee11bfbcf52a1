package apply

import (
	"cmp"
	"context"
	"slices"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
)

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
			err := a.cfg.Hinter.Hint(ctx, Received{Origin: im.origin, Epoch: im.epoch, Seq: im.seq, Tx: im.tx, Data: im.data, Proof: im.proof, Cert: im.cert})
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
				// A duplicate may be a run whose commit went through
				// while its acknowledgement was lost (apply then reloads
				// its progress): counted as informing too, so that this
				// site still beats after it.
				n := meta.Informing(im.tx)
				a.count(func(s *Stats) { s.Skipped, s.Informing = s.Skipped+1, s.Informing+n })
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
