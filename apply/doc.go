// Package apply merges other sites' transactions into the local database,
// exactly once, in each origin's commit order.
//
// An Applier reads the site's inbox and applies runs of transactions from
// one origin in one local transaction, on a connection dedicated to that
// origin: session_replication_role = replica (no triggers, no FK checks, so
// a row may arrive before what it refers to arrives from another origin), the
// origin's replication origin set up for the session, and
// pg_replication_origin_xact_setup plus casualdb.progress recording the
// origin's position in the same transaction as the rows. A redelivered
// message is therefore recognised and skipped: it is applied exactly once.
//
// For every row change, apply:
//  1. locks the row (SELECT ... FOR UPDATE; an absent row is "locked" by the
//     INSERT that creates it, since a concurrent local insert of the same key
//     must wait for it),
//  2. makes sure the recorded version of the row is the true current one: if
//     the row's xmin is not the one on record, or the row is absent, a local
//     write may have committed that capture has not versioned yet, so it
//     waits until capture has processed the WAL up to the current flush
//     position (Capture.WaitProcessed),
//  3. decides with conflict.Decide (last-writer-wins by HLC then origin;
//     vector clocks tell causal overwrites from true conflicts, which are
//     logged in casualdb.conflict_log),
//  4. writes the row and its new version in the same transaction.
//
// A change that cannot be applied (a constraint it violates here, a table or
// column this site lacks, an unchanged TOASTed value this site does not know)
// is parked in casualdb.parked with the whole change, and the rest of the
// stream goes on. A message that does not decode is parked raw.
package apply
