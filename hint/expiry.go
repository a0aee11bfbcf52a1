package hint

import (
	"context"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/apply"
	"github.com/casualdb/casualdb/meta"
	"github.com/jackc/pgx/v5"
)

// Hint retention. A hint older than cluster.hint_retention is expired by
// its holder (this site), never silently:
//
//  1. Store.Expire sums up the old hints by site, origin and epoch and
//     hands the summary to Tend, which commits it to
//     casualdb.hint_expiry before a single hint is removed;
//  2. it is logged (Warn), counted (casualdb_hints_expired_total{site}) and
//     shown in /status;
//  3. every open record is gossiped in this site's digest. The site it was
//     for compares it with what it has applied from the origin and, while
//     it is behind, reports the transactions it misses (/status, /healthz,
//     casualdb_missed_transactions{origin}, a Warn log). They can still come
//     from the origin's outbox, which keeps what a down peer has not
//     acknowledged; once applied, the report clears by itself;
//  4. this site learns from the same gossip when that site has applied past
//     a record, marks it resolved and stops gossiping it.
const (
	// expiryKeepResolved is how long a resolved record stays in
	// casualdb.hint_expiry for operators to see.
	expiryKeepResolved = 7 * 24 * time.Hour
	// expiryForget is how long an open record is kept (and gossiped) after
	// its last expiry: a site gone for good must not be reported for ever.
	expiryForget = 30 * 24 * time.Hour
	// maxGossipedExpiries bounds the records in one digest (most recent
	// first): the digest stays small.
	maxGossipedExpiries = 32
)

// Expired is one open expiry record in the gossiped digest: the
// holder gave up the hints for site For of Origin's transactions in Epoch
// up to Seq. Short keys: it travels in every full-state exchange.
type Expired struct {
	For    casualdb.SiteID `json:"f"`
	Origin casualdb.SiteID `json:"o"`
	Epoch  string          `json:"e"`
	Seq    uint64          `json:"s"` // highest origin outbox sequence expired
	LSN    uint64          `json:"l"` // its commit LSN at the origin
	Hints  uint64          `json:"n"` // how many hints went
}

// ExpiryStatus is one record of hints this site expired (/status).
type ExpiryStatus struct {
	For          string    `json:"for"`
	Origin       string    `json:"origin"`
	Epoch        string    `json:"epoch"`
	Hints        uint64    `json:"hints"`
	FirstSeq     uint64    `json:"first_seq"`
	LastSeq      uint64    `json:"last_seq"`
	LastLSN      string    `json:"last_lsn"`
	FirstExpired time.Time `json:"first_expired"`
	LastExpired  time.Time `json:"last_expired"`
	// Resolved: the site has applied the origin past LastSeq (by gossip).
	Resolved   bool       `json:"resolved"`
	ResolvedAt *time.Time `json:"resolved_at,omitempty"`
}

// MissingStatus is a report of this site (/status): a holder let the hints
// for it expire, and it has not applied their origin that far yet.
type MissingStatus struct {
	Origin       string `json:"origin"`
	Epoch        string `json:"epoch"`
	UpToSeq      uint64 `json:"up_to_seq"`
	UpToLSN      string `json:"up_to_lsn"`
	Holder       string `json:"holder"`
	HintsExpired uint64 `json:"hints_expired"`
	// AppliedSeq is what this site has applied from the origin in that
	// epoch (0 when its progress is in another epoch).
	AppliedSeq uint64 `json:"applied_seq"`
	// Missing is UpToSeq - AppliedSeq: the origin's transactions up to the
	// last expired hint that this site has not applied.
	Missing uint64 `json:"missing_transactions"`
}

// Warning renders m for /healthz, /status and casualdb status.
func (m MissingStatus) Warning() string {
	return fmt.Sprintf("missing %d transactions from origin %s up to seq %d (hints expired at holder %s); they come only from %s's outbox or a repair",
		m.Missing, m.Origin, m.UpToSeq, m.Holder, m.Origin)
}

// Tend expires the hints kept longer than the retention and settles the
// expiry records (expire, settle), on conn. The sidecar's housekeeping
// calls it; without a database connection nothing expires.
func (k *Keeper) Tend(ctx context.Context, conn *pgx.Conn) {
	k.settle(ctx, conn, k.expire(ctx, conn))
}

// expire expires the hints kept longer than cluster.hint_retention,
// recording them first on conn. Without a database
// connection nothing expires (hints are kept longer rather than dropped
// unrecorded).
func (k *Keeper) expire(ctx context.Context, conn *pgx.Conn) (expired bool) {
	ectx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	cutoff := time.Now().Add(-k.cfg.Retention)
	gone, err := k.cfg.Store.Expire(ectx, cutoff, func(ctx context.Context, es []Expiry) error {
		recs := make([]meta.HintExpiry, len(es))
		for i, e := range es {
			recs[i] = meta.HintExpiry{For: e.For, Origin: e.Origin, Epoch: e.Epoch, Hints: e.Hints, FirstSeq: e.FirstSeq, LastSeq: e.LastSeq, LastLSN: e.LastLSN}
		}
		return pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error { return meta.RecordHintExpiries(ctx, tx, recs) })
	})
	if err != nil {
		k.log.Warn("expire hints", "err", err)
		return false
	}
	for _, e := range gone {
		k.log.Warn("hints expired: the site will not get these transactions from here; they come only from the origin's outbox or a repair",
			"for", e.For, "origin", e.Origin, "epoch", e.Epoch, "hints", e.Hints, "first_seq", e.FirstSeq, "last_seq", e.LastSeq,
			"last_lsn", casualdb.FormatLSN(e.LastLSN), "retention", k.cfg.Retention)
		k.mu.Lock()
		k.expired[e.For] += e.Hints
		k.mu.Unlock()
	}
	return len(gone) > 0
}

// settle marks resolved the records whose site has applied past
// them (by its gossiped digest), forgets old ones, and reloads what this
// site gossips and shows when any of that, or an expiry (changed), moved
// the table, or it was never loaded.
func (k *Keeper) settle(ctx context.Context, conn *pgx.Conn, changed bool) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	k.mu.Lock()
	recs := k.expiries
	k.mu.Unlock()
	for _, e := range recs {
		if !e.Resolved.IsZero() {
			continue
		}
		got, ok := k.remoteApplied(e.For, e.Origin)
		if !ok || got.Epoch != e.Epoch || got.Seq < e.LastSeq {
			continue
		}
		resolved, err := meta.ResolveHintExpiry(ctx, conn, e.For, e.Origin, e.Epoch, got.Seq)
		if err != nil {
			k.log.Warn("resolve expired hints", "err", err)
			return
		}
		if resolved {
			changed = true
			k.log.Info("expired hints resolved: the site has applied the origin past them", "for", e.For, "origin", e.Origin,
				"epoch", e.Epoch, "last_seq", e.LastSeq, "applied_seq", got.Seq)
		}
	}
	if n, err := meta.ForgetHintExpiries(ctx, conn, expiryKeepResolved, expiryForget); err != nil {
		k.log.Warn("forget expired hints", "err", err)
	} else if n > 0 {
		changed = true
		k.log.Info("forgot old records of expired hints", "records", n)
	}
	if !changed && k.expiriesLoaded {
		return
	}
	recs, err := meta.LoadHintExpiries(ctx, conn)
	if err != nil {
		k.log.Warn("load expired hints", "err", err)
		return
	}
	k.mu.Lock()
	k.expiries = recs
	k.mu.Unlock()
	k.expiriesLoaded = true
}

// remoteApplied returns what site says, in its last gossiped digest, it
// has applied from origin.
func (k *Keeper) remoteApplied(site, origin casualdb.SiteID) (Applied, bool) {
	digest, _ := k.Digest(site)
	got, ok := digest.Applied[origin]
	return got, ok
}

// Gossiped returns the open records for the digest, most recent
// first. It only takes the mutex: gossip calls it.
func (k *Keeper) Gossiped() []Expired {
	k.mu.Lock()
	defer k.mu.Unlock()
	var out []Expired
	for _, e := range k.expiries {
		if e.Resolved.IsZero() && len(out) < maxGossipedExpiries {
			out = append(out, Expired{For: e.For, Origin: e.Origin, Epoch: e.Epoch, Seq: e.LastSeq, LSN: e.LastLSN, Hints: e.Hints})
		}
	}
	return out
}

// Missing returns what this site misses because a holder let its
// hints expire, from every peer's last gossiped digest (missingFor).
func (k *Keeper) Missing(applied map[casualdb.SiteID]apply.OriginStats) []MissingStatus {
	self := k.cfg.Site
	digests := map[casualdb.SiteID]Digest{}
	for _, m := range k.cfg.Members.Members() {
		if m.Site == self {
			continue
		}
		if digest, ok := k.Digest(m.Site); ok {
			digests[m.Site] = digest
		}
	}
	return missingFor(self, digests, applied)
}

// missingFor returns every open record the holders' digests carry for
// site self whose origin self has not applied that far (in that epoch: a
// progress in another epoch counts as nothing applied), sorted by origin and
// holder.
func missingFor(self casualdb.SiteID, digests map[casualdb.SiteID]Digest, applied map[casualdb.SiteID]apply.OriginStats) []MissingStatus {
	var out []MissingStatus
	for holder, digest := range digests {
		for _, e := range digest.Expired {
			if e.For != self || e.Origin == self {
				continue
			}
			var got uint64
			if os := applied[e.Origin]; os.Epoch == e.Epoch {
				got = os.Seq
			}
			if got >= e.Seq {
				continue // repaired: applied past it
			}
			out = append(out, MissingStatus{Origin: string(e.Origin), Epoch: e.Epoch, UpToSeq: e.Seq, UpToLSN: casualdb.FormatLSN(e.LSN),
				Holder: string(holder), HintsExpired: e.Hints, AppliedSeq: got, Missing: e.Seq - got})
		}
	}
	slices.SortFunc(out, func(a, b MissingStatus) int {
		return strings.Compare(a.Origin+"\x00"+a.Holder+"\x00"+a.Epoch, b.Origin+"\x00"+b.Holder+"\x00"+b.Epoch)
	})
	return out
}

// MissingLog logs when this site starts or stops missing transactions
// because of expired hints; the sidecar's housekeeping owns it.
type MissingLog map[string]MissingStatus

func (l MissingLog) Update(log *slog.Logger, now []MissingStatus) {
	seen := map[string]bool{}
	for _, m := range now {
		k := m.Origin + "/" + m.Holder + "/" + m.Epoch
		seen[k] = true
		if old, ok := l[k]; ok && old.UpToSeq == m.UpToSeq {
			continue
		}
		l[k] = m
		log.Warn("transactions missing: the hints for this site expired at their holder; they come only from the origin's outbox or a repair",
			"origin", m.Origin, "holder", m.Holder, "epoch", m.Epoch, "up_to_seq", m.UpToSeq, "applied_seq", m.AppliedSeq, "missing", m.Missing)
	}
	for k, m := range l {
		if !seen[k] {
			delete(l, k)
			log.Info("missing transactions repaired (or no longer reported by their holder)", "origin", m.Origin, "holder", m.Holder, "up_to_seq", m.UpToSeq)
		}
	}
}

// expiryStatus renders this site's records for /status.
func expiryStatus(recs []meta.HintExpiry) []ExpiryStatus {
	var out []ExpiryStatus
	for _, e := range recs {
		hs := ExpiryStatus{For: string(e.For), Origin: string(e.Origin), Epoch: e.Epoch, Hints: e.Hints, FirstSeq: e.FirstSeq,
			LastSeq: e.LastSeq, LastLSN: casualdb.FormatLSN(e.LastLSN), FirstExpired: e.FirstExpired, LastExpired: e.LastExpired}
		if !e.Resolved.IsZero() {
			at := e.Resolved
			hs.Resolved, hs.ResolvedAt = true, &at
		}
		out = append(out, hs)
	}
	return out
}
