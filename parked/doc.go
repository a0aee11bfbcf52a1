// Package parked replays and discards the entries of casualdb.parked: the
// changes apply could not apply, the local rows it removed to settle unique
// collisions, and the transport messages that did not decode. Meta owns the
// table and the payload types (meta.Parked, meta.ParkedChange,
// meta.RemovedRow); apply writes them; this package is what an operator
// does with them, behind `casualdb parked`.
//
// A replay writes an entry as an ordinary local write and deletes the
// entry, in one transaction. It writes through apply's description of the
// local table (apply.DescribeTable), casting every value from its text
// form to the local column type as apply does. The write is a local write,
// so capture versions it and ships it like any other: the caller's
// session must have no replication origin and the server's
// session_replication_role, and CasualDB's canonical session settings
// (apply.CanonicalConfig), so that values read and write as every site
// renders them.
//
// The functions run one transaction on a connection the caller owns; they
// hold no state and start no goroutines.
package parked
