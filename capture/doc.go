// Package capture turns the committed transactions of the local PostgreSQL
// into versioned casualdb.Tx values in the site's outbox.
//
// It reads a logical replication slot with the pgoutput plugin (a Reader
// goroutine that owns the replication connection) and hands whole
// transactions, in commit order, to a processor goroutine that:
//
//  1. gives every row change a version (conflict.Next: the HLC is seeded from
//     the commit timestamp and always exceeds the version the write
//     overwrote; the vector clock counts this site's write), and, for the
//     columns of unique indexes other than the primary key, the claims of
//     their values (conflict.NextClaims: kept from the row's previous
//     version while the value stays, this change's stamp when it sets one),
//  2. appends the transactions to the outbox and waits until it holds them
//     durably,
//  3. records the new versions in casualdb.row_version together with the
//     outbox position they come from,
//  4. and only then lets the slot's confirmed flush LSN move past them.
//
// A crash anywhere loses nothing: transactions not yet in the outbox are
// decoded again from the slot; transactions in the outbox whose metadata was
// not yet written are re-read from the outbox on start.
//
// Transactions that the sidecar's apply wrote carry a replication origin;
// they are not shipped again, but capture still follows them, because apply
// and capture meet on the same rows: apply may only decide against a row's
// version once capture has versioned every local write to it that committed
// before (WaitProcessed), and capture may only version a local write once
// every apply transaction before it in the WAL is visible (BeginApply,
// EndApply).
package capture
