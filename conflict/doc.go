// Package conflict holds CasualDB's clocks and merge rules: how a site stamps
// a row version when it writes, and how every site merges the versions of a
// row that reach it. It is pure: no goroutines, no I/O, no clock reads. Capture
// calls Next with the row's stored version and the commit timestamp; apply
// calls Decide with the stored version and the incoming one, writes the row
// image if the Decision says so, records Decision.Stored in the same
// transaction, and logs the Decision when its Outcome is Conflict.
//
// # Versions
//
// A casualdb.Version carries a hybrid logical clock (HLC), its origin site and
// a vector clock (VC) counting, per site, the writes to the row it has seen.
// Next builds the version of a local write from the row's stored version:
//
//   - HLC = NextHLC(stored.HLC, commit time): the commit time if it is ahead,
//     otherwise the stored HLC plus one logical tick. It is always strictly
//     greater than the stored HLC, whatever the local wall clock says.
//   - VC = stored VC with the writing site's counter incremented, so every
//     write has a unique dot (site, counter) and its VC names exactly the
//     writes it causally follows, plus itself.
//
// # Merge
//
// Decide keeps, per row, one stored version whose HLC and Origin are those of
// the maximum under Less (last-writer-wins by HLC, then by origin name) and
// whose VC is the join (pointwise max) of the clocks of every version merged.
// The incoming row image is applied exactly when it is that maximum.
//
// The vector clocks never choose the winner; they only classify the outcome
// by comparing the stored VC with the incoming one: Overwrite when the
// incoming version has seen everything stored (a causal successor), Stale when
// the stored clock already covers it (a duplicate or a superseded write), and
// Conflict when the two are concurrent. Conflicts are the true conflicts that
// apply records in the conflict log.
//
// # Why every site converges
//
// The stored state is a pair (maximum by Less, join of VCs). Less is a total
// order, so "maximum" is a join-semilattice; pointwise max of vector clocks is
// one too; a product of semilattices is a semilattice. Folding versions with
// Decide is therefore commutative, associative and idempotent: every site that
// has received the same set of versions, in any order and with any number of
// duplicates, stores the same version and holds the same row image.
//
// # Why a causal successor always wins
//
// The stored HLC is the largest HLC of every version merged at the site,
// because Less orders by HLC first. A write made after merging a version a is
// stamped by Next from that stored version, so its HLC is strictly greater
// than a's: it wins under Less even when its site's wall clock is far behind
// a's. Last-writer-wins and causality therefore never disagree for versions
// made by Next. If they ever do (a version built some other way, or corrupt
// metadata), Decide still follows Less, so that the merge stays a semilattice,
// and reports Conflict with rule "lww" so that the anomaly is logged.
//
// # Unique claims
//
// Two rows with different keys may claim one value of a unique index other
// than the primary key at two sites. The earlier claim keeps it
// (EarlierClaim): when each row's value was set, as NextClaims stamped it at
// the change's origin and every site stores it, not the rows' current
// versions, which later updates move (see claim.go).
//
// # Removed metadata
//
// When a site removes a row's versions (tombstone collection, truncation)
// and the row is written again, Start stamps the write from the table's
// collected floor (CollectFloor), and a site that still holds the row's
// floor judges it by what its transaction had seen (SawDeletes, SeenFloor):
// see floor.go.
package conflict
