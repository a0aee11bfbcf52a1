package conflict

import (
	"github.com/casualdb/casualdb"
	"github.com/cespare/xxhash/v2"
)

// RuleUnique names the resolution of two rows (different primary keys) that
// claim the same value of a unique index other than the primary key: the
// earlier claim (EarlierClaim) keeps the value at every site.
const RuleUnique = "unique_earlier_claim"

// A row claims a value of a unique index when a change sets it: an insert,
// or an update that changes one of the index's columns (into a value another
// row may hold elsewhere: that is a new claim, at that update's version).
// Updates that leave the index's columns alone do not move the claim. Claims
// are per column (casualdb.Claim); a row's claim of an index's value is the
// latest claim of the index's columns (ClaimOf), the moment the row's tuple
// of values in the index took its current form.
//
// Why claims, not versions: a row's version moves with every write of it,
// so comparing the holder's current version with an incoming one made the
// outcome depend on when each site met the rows (a holder updated before a
// site met the other row lost there and won elsewhere: issue 12). A claim is
// computed once, at the origin of the change that makes it (NextClaims,
// from the row's previous claims), travels with the change and is stored
// with the row's version, so every site compares the same two claims, and
// no later update of either row changes them.

// ClaimValue is one column of a unique index in the new row of a change, as
// NextClaims needs it.
type ClaimValue struct {
	Column string
	// Hash is ClaimHash of the new value; ignored when Unknown.
	Hash uint64
	// Unknown marks a value the change did not carry: an unchanged TOASTed
	// value (pgoutput's 'u'), which the change therefore did not change.
	Unknown bool
}

// ClaimHash is the hash of a value kept with its claim. The origin of a
// row's next change compares it with the hash of the new value to tell
// whether the change sets another value (a new claim) without needing the
// old row (REPLICA IDENTITY FULL). NULL hashes apart from every text.
func ClaimHash(v casualdb.Value) uint64 {
	if v.Null {
		return xxhash.Sum64String("\x00null")
	}
	return xxhash.Sum64String("\x01" + v.Text)
}

// NextClaims returns a row's claims after a change stamped s whose new row
// holds vals at the columns of the table's unique indexes; prev are the
// row's claims before it (nil for an insert, or when the row was absent or
// deleted). A column keeps its previous claim when the change left its value
// as it was (same hash, or a value the change did not carry); otherwise the
// change claims it at s. A column without a previous claim (a row recorded
// before claims were kept) whose value is unknown or may have changed is
// claimed at s: missing metadata never makes a claim earlier than the change
// that shows it. The result shares nothing with prev.
func NextClaims(prev map[string]casualdb.Claim, vals []ClaimValue, s casualdb.Stamp) map[string]casualdb.Claim {
	if len(vals) == 0 {
		return nil
	}
	out := make(map[string]casualdb.Claim, len(vals))
	for _, v := range vals {
		p, ok := prev[v.Column]
		switch {
		case ok && (v.Unknown || p.Hash == v.Hash):
			out[v.Column] = p
		default:
			out[v.Column] = casualdb.Claim{Stamp: s, Hash: v.Hash}
		}
	}
	return out
}

// ClaimOf returns when a row claimed its value of a unique index over cols:
// the latest claim among the columns. A column without a recorded claim (a
// row written before claims were kept, or by a sidecar that did not ship
// them) counts as claimed at fallback, the row's version.
func ClaimOf(claims map[string]casualdb.Claim, cols []string, fallback casualdb.Stamp) casualdb.Stamp {
	if len(cols) == 0 {
		return fallback
	}
	var out casualdb.Stamp
	for i, col := range cols {
		s := fallback
		if c, ok := claims[col]; ok {
			s = c.Stamp
		}
		if i == 0 || out.Less(s) {
			out = s
		}
	}
	return out
}

// Claimant is one row claiming a value: its claim (ClaimOf) and its primary
// key (casualdb.KeyString), which breaks ties.
type Claimant struct {
	Claim casualdb.Stamp
	Key   string
}

// EarlierClaim reports whether a claimed the value before b, so that a
// keeps it and b loses it: by claim stamp (HLC, then origin), then by key.
// Two rows' claims can share a stamp only when one transaction of one origin
// made both; the key makes the order total all the same, so that every site
// picks the same holder whatever order the rows reach it in.
func EarlierClaim(a, b Claimant) bool {
	if a.Claim != b.Claim {
		return a.Claim.Less(b.Claim)
	}
	return a.Key < b.Key
}
