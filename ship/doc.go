// Package ship moves captured transactions between sites over NATS
// JetStream.
//
// Every site has two streams on its own NATS server (by default embedded in
// the sidecar, one replica, so a partitioned site keeps capturing):
//
//   - the outbox, CASUALDB_OUT_<site>: every local transaction, in commit
//     order; its stream sequence is the transaction's gapless origin
//     sequence;
//   - the inbox, CASUALDB_IN_<site>: transactions of other sites waiting to
//     be applied here, subject casualdb.in.<site>.<origin>.
//
// A Shipper per peer reads the outbox through a durable consumer of that
// peer's own, publishes to the peer's inbox (de-duplicated by transaction id)
// and acknowledges the outbox only when the peer's inbox holds the
// transaction. A peer that is down simply leaves its consumer behind: the
// outbox keeps everything that consumer has not acknowledged, and the peer
// gets it all when it is back. The outbox is purged only below the slowest
// peer's acknowledgement and below what capture has recorded.
//
// Apply reads the inbox through Inbox.Consume, one consumer per origin, and
// gets every message decoded (DecodeInboxMsg) as a casualdb.InboxMsg: the
// wire format and NATS end here.
//
// JetStream de-duplication is only an optimisation; exactly-once comes from
// the per-origin progress that apply records in each apply transaction.
package ship
