package casualdb

import "time"

// InboxMsg is one message of a site's inbox as the transport (package ship)
// decoded it: the transactions it carries, with their transport headers, and
// the handle that acknowledges it. Apply reads these and never the
// transport's own types, so that it does not depend on NATS.
//
// A message carries one transaction, or several of one origin (a bundle).
// It is acknowledged once every one of them is applied or known as a
// duplicate.
type InboxMsg struct {
	// Acker acknowledges the message as a whole.
	Acker
	// Origin is the site whose transactions these are. Empty only when Err
	// is set.
	Origin SiteID
	// Relayer is the site that relayed them (a hint it kept); empty when
	// the origin sent them itself.
	Relayer SiteID
	// Epoch is the creation time of the origin's outbox, in which the
	// sequences count.
	Epoch string
	// Seq and LSN are the headers' first origin sequence and last commit
	// LSN, zero when absent or garbled: what is recorded when a message
	// that does not decode is parked.
	Seq, LSN uint64
	// Data is the message's payload as received.
	Data []byte
	// StreamSeq is the message's sequence in the inbox stream (0: unknown):
	// a redelivery of a message has the same.
	StreamSeq uint64
	// Txs are the transactions it carries, in order. Empty when Err is set.
	Txs []InboxTx
	// Err, wrapping ErrGarbled, tells why the message as a whole does not
	// decode (its headers or its framing).
	Err error
	// Cert is the origin's certificate (DER) when its transactions carry
	// proofs (InboxTx.Proof).
	Cert []byte
}

// InboxTx is one transaction of an InboxMsg.
type InboxTx struct {
	Seq  uint64 // origin outbox sequence
	Data []byte // the transaction as shipped (Tx.Marshal)
	// Tx is Data decoded, with Seq set; nil when Err is set.
	Tx *Tx
	// Err tells why Data does not decode, or does not belong to the
	// message's origin (wrapping ErrGarbled for the latter).
	Err error
	// Proof ties Data to a run of transactions its origin signed (see
	// package ship); nil when the origin did not sign. A site that keeps
	// the transaction as a hint relays it with the proof and Cert.
	Proof []byte
}

// Acker acknowledges an inbox message (jetstream.Msg implements it). The
// transport owns the message until Ack or NakWithDelay.
type Acker interface {
	// Ack removes the message from the inbox.
	Ack() error
	// NakWithDelay hands the message back, to be delivered again after
	// delay.
	NakWithDelay(delay time.Duration) error
	// InProgress tells the transport that the message is still being
	// worked on, so that it is not delivered again meanwhile.
	InProgress() error
}
