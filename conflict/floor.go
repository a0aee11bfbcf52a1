package conflict

import "github.com/casualdb/casualdb"

// When a site removes a row's version metadata (tombstone collection, a
// truncation) and the row is written again, nothing recorded says what the
// removed versions were. Three things keep the sites that removed it and
// those that did not in agreement:
//
//   - The HLC: each site keeps, per table, a collected floor (CollectFloor)
//     with the greatest HLC of the versions it removed, and a local write to
//     a row with no stored version is stamped above it (Start): it is the
//     later, by last-writer-wins, than every removed version, as it would
//     have been had the row's version been kept. A tombstone made on a
//     clock that runs ahead would otherwise beat the new write wherever it
//     is kept.
//   - The site's own counter: the floor's clock joins the removed clocks,
//     and the write's clock starts at the writing site's counter in it plus
//     one, so that it reuses no dot (site, counter) the row had; a site that
//     remembers the old dot would take the new write for a duplicate.
//   - Causality by transaction: the other sites' counters start afresh, so
//     the clock does not show that the write followed the removed deletes.
//     Its transaction does (casualdb.Tx.Deps: what its origin had applied).
//     A site that still holds the row's floor checks the deletes it merged
//     into it (their origins and commit LSNs) against the transaction
//     (SawDeletes) and, when the transaction had seen them all, judges the
//     write with its clock joined with the floor (SeenFloor): alive under
//     DeleteWins.
//
// Why not start from the whole joined clock of the floor, which would cover
// the removed deletes by itself? The clocks count writes per row: other
// rows' counters would claim writes to this row that it never saw, and a
// concurrent write with a lower count would be judged stale at some sites
// and a conflict at others (TestCollectFloor_Converges finds that
// divergence within seconds). Only the writing site's own counter is safe
// to take over: every write it made to the row is below it.

// CollectFloor returns a table's collected floor after the removal of the
// stored state r of one of its rows: the greater of the two HLCs, and the
// join of floor's clock with r's clock and delete floor. floor is not
// modified; the result's Origin is empty (a floor is no write).
func CollectFloor(floor casualdb.Version, r Row) casualdb.Version {
	out := casualdb.Version{HLC: floor.HLC, VC: Join(Join(floor.VC, r.Version.VC), r.Floor)}
	if r.Version.HLC.Compare(out.HLC) > 0 {
		out.HLC = r.Version.HLC
	}
	return out
}

// Start returns the version to build site's local write on (Next's prev)
// for a row with no stored version in a table whose collected floor is
// floor: nil without a floor (nothing was removed), else a version with the
// floor's HLC and a clock holding only site's counter in the floor, so that
// Next stamps the write above the floor with a dot the row never had.
func Start(floor *casualdb.Version, site casualdb.SiteID) *casualdb.Version {
	if floor == nil || (floor.HLC == (casualdb.HLC{}) && len(floor.VC) == 0) {
		return nil
	}
	v := &casualdb.Version{HLC: floor.HLC, VC: casualdb.VectorClock{}}
	if n := floor.VC[site]; n > 0 {
		v.VC[site] = n
	}
	return v
}

// SawDeletes reports whether a transaction committed at origin at commit
// LSN lsn, with dependencies deps (casualdb.Tx.Deps), had seen every delete
// that floorLSNs names (per origin, the commit LSN of the last delete of
// that origin merged into a row's floor): its own, or applied at its origin
// before it committed. False when floorLSNs is empty (no floor, or its
// deletes are unknown).
func SawDeletes(floorLSNs map[casualdb.SiteID]uint64, origin casualdb.SiteID, lsn uint64, deps map[casualdb.SiteID]uint64) bool {
	if len(floorLSNs) == 0 {
		return false
	}
	for o, l := range floorLSNs {
		if o == origin {
			if l > lsn {
				return false
			}
			continue
		}
		if deps[o] < l {
			return false
		}
	}
	return true
}

// SeenFloor returns incoming with its clock joined with stored's floor: the
// version of a write that saw every delete of the floor (SawDeletes) whose
// clock does not show it, because its origin had removed the row's versions
// before it wrote. incoming is not modified.
func SeenFloor(stored *Row, incoming casualdb.Version) casualdb.Version {
	if stored == nil || len(stored.Floor) == 0 || covers(incoming.VC, stored.Floor) {
		return incoming
	}
	incoming.VC = Join(incoming.VC, stored.Floor)
	return incoming
}

// JoinFloorLSNs returns a's entries joined with b's (per origin, the
// greater LSN) in a new map; nil when both are empty.
func JoinFloorLSNs(a, b map[casualdb.SiteID]uint64) map[casualdb.SiteID]uint64 {
	if len(a) == 0 && len(b) == 0 {
		return nil
	}
	out := make(map[casualdb.SiteID]uint64, len(a)+len(b))
	for o, l := range a {
		out[o] = l
	}
	for o, l := range b {
		out[o] = max(out[o], l)
	}
	return out
}

// RaiseFloors joins floors, as read from the database, into known (nil:
// none yet) and returns it: a table's floor only grows, whichever reader
// saw more of it first.
func RaiseFloors(known, floors map[string]casualdb.Version) map[string]casualdb.Version {
	if known == nil {
		known = map[string]casualdb.Version{}
	}
	for tbl, f := range floors {
		if old, ok := known[tbl]; ok {
			f = CollectFloor(old, Row{Version: f})
		}
		known[tbl] = f
	}
	return known
}
