// Package meta owns CasualDB's own schema in each site's database: the
// version of every replicated row (tombstones included), the progress applied
// from every origin, the capture high-water mark, parked changes and the
// conflict log.
//
// Everything here is a plain function over a Querier (a connection or a
// transaction), so that callers write version metadata in the same
// transaction as the rows it describes. The package holds no state and starts
// no goroutines.
//
// Each table has one owner here, for its writes and its reads: apply parks
// with Park (the payload is a ParkedChange or a RemovedRow, decoded by
// Parked.Decode) and logs with LogConflict; the operator's commands read
// with FindParked and FindConflicts, which report a database without the
// schema as ErrNotInstalled.
package meta
