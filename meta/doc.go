// Package meta owns CasualDB's own schema in each site's database: the
// version of every replicated row (tombstones included), the progress applied
// from every origin, the capture high-water mark, parked changes and the
// conflict log.
//
// Everything here is a plain function over a Querier (a connection or a
// transaction), so that callers write version metadata in the same
// transaction as the rows it describes. The package holds no state and starts
// no goroutines.
package meta
