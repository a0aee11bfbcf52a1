package ship

import (
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"strconv"

	"github.com/casualdb/casualdb"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// HeaderBundle marks an inbox message that carries several transactions of
// one origin; its value is how many. A message without it carries one
// transaction, with its sequence in HeaderSeq.
//
// The shipper bundles what it has in hand when it publishes: per-message
// costs (the peer's stream write, delivery, acknowledgement) are most of
// the transport's CPU, and paying them once per bundle rather than once per
// transaction is what keeps the sidecars from crowding the databases.
const HeaderBundle = "Casualdb-Bundle"

// maxBundleBytes bounds a bundle's body (the server accepts 8 MiB).
const maxBundleBytes = 1 << 20

// Entry is one transaction in an inbox message: its origin outbox sequence
// and its encoded form (casualdb.Tx.Marshal).
type Entry struct {
	Seq  uint64
	Data []byte
}

// AppendEntry frames e onto a bundle body: uvarint sequence, uvarint
// length, payload.
func AppendEntry(body []byte, e Entry) []byte {
	body = binary.AppendUvarint(body, e.Seq)
	body = binary.AppendUvarint(body, uint64(len(e.Data)))
	return append(body, e.Data...)
}

// Entries returns the transactions an inbox message carries, in order. A
// message whose headers or framing do not make sense is casualdb.ErrGarbled.
func Entries(h nats.Header, data []byte) ([]Entry, error) {
	if h.Get(HeaderBundle) == "" {
		seq, err := strconv.ParseUint(h.Get(HeaderSeq), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("%w: missing or bad %s header", casualdb.ErrGarbled, HeaderSeq)
		}
		return []Entry{{Seq: seq, Data: data}}, nil
	}
	n, err := strconv.Atoi(h.Get(HeaderBundle))
	if err != nil || n <= 0 {
		return nil, fmt.Errorf("%w: bad %s header %q", casualdb.ErrGarbled, HeaderBundle, h.Get(HeaderBundle))
	}
	// Every entry takes at least two bytes (its sequence and its length):
	// a larger count is garbled, and must not size the allocation below
	// (found by FuzzEntries: a count of 4e9 ran the sidecar out of memory).
	if n > len(data)/2 {
		return nil, fmt.Errorf("%w: %s header says %d transactions in %d bytes", casualdb.ErrGarbled, HeaderBundle, n, len(data))
	}
	out := make([]Entry, 0, n)
	for len(data) > 0 {
		seq, k := binary.Uvarint(data)
		if k <= 0 {
			return nil, fmt.Errorf("%w: bundle entry %d: bad sequence", casualdb.ErrGarbled, len(out))
		}
		data = data[k:]
		size, k := binary.Uvarint(data)
		if k <= 0 || size > uint64(len(data)-k) {
			return nil, fmt.Errorf("%w: bundle entry %d: bad length", casualdb.ErrGarbled, len(out))
		}
		data = data[k:]
		out = append(out, Entry{Seq: seq, Data: data[:size:size]})
		data = data[size:]
	}
	if len(out) != n {
		return nil, fmt.Errorf("%w: bundle holds %d transactions, header says %d", casualdb.ErrGarbled, len(out), n)
	}
	return out, nil
}

// An inbox message is its own acknowledgement handle.
var _ casualdb.Acker = jetstream.Msg(nil)

// DecodeInboxMsg decodes m, a message of an inbox, for apply: its transport
// headers, its transactions (casualdb.UnmarshalTx, with their sequences),
// and m itself as the handle that acknowledges it. What does not decode is
// reported in the result, not parked here: the message as a whole
// (InboxMsg.Err: garbled headers or framing, no origin) or one transaction
// of it (InboxTx.Err; a transaction of another origin than the header's
// too). It touches nothing shared: the consumers' goroutines call it, so
// that decoding overlaps apply's work with the database.
func DecodeInboxMsg(m jetstream.Msg) *casualdb.InboxMsg {
	h := m.Headers()
	origin, relayer := subjectSites(m.Subject())
	out := &casualdb.InboxMsg{Acker: m, Origin: casualdb.SiteID(h.Get(HeaderOrigin)), Relayer: relayer, Epoch: h.Get(HeaderEpoch), Data: m.Data()}
	out.Seq, _ = strconv.ParseUint(h.Get(HeaderSeq), 10, 64)
	out.LSN, _ = strconv.ParseUint(h.Get(HeaderLSN), 10, 64)
	if md, err := m.Metadata(); err == nil {
		out.StreamSeq = md.Sequence.Stream
	}
	entries, err := Entries(h, out.Data)
	if err == nil && out.Origin == "" {
		err = fmt.Errorf("%w: missing %s header", casualdb.ErrGarbled, HeaderOrigin)
	}
	if err == nil {
		// casualdb.in.<site>.<origin>[.<relayer>]: the subject, which the
		// server's permissions tie to the publisher, names the origin.
		if origin != out.Origin {
			err = fmt.Errorf("%w: a transaction of %s on subject %s", casualdb.ErrGarbled, out.Origin, m.Subject())
		}
	}
	if err == nil && out.Relayer != "" && len(entries) != 1 {
		err = fmt.Errorf("%w: a relay of %d transactions (a relay carries one)", casualdb.ErrGarbled, len(entries))
	}
	if err != nil {
		out.Err = err
		return out
	}
	out.Txs = make([]casualdb.InboxTx, len(entries))
	for i, e := range entries {
		out.Txs[i] = casualdb.InboxTx{Seq: e.Seq, Data: e.Data}
		tx, err := casualdb.UnmarshalTx(e.Data)
		if err == nil && tx.Origin != out.Origin {
			err = fmt.Errorf("%w: tx of %s arrived as from %s", casualdb.ErrGarbled, tx.Origin, out.Origin)
		}
		if err != nil {
			out.Txs[i].Err = err
			continue
		}
		tx.Seq = e.Seq
		out.Txs[i].Tx = tx
	}
	return out
}

// withProofs gives the transactions of m, sent by their origin itself, their
// proofs (attachProofs): what a site that may keep them as hints needs. A
// signature header that does not fit leaves them without, and is returned:
// the origin's own transactions stand (the subject shows who sent them);
// only a relay of them needs the proofs, and is refused without
// (RelayVerifier).
func withProofs(h nats.Header, m *casualdb.InboxMsg, cert []byte) error {
	err := attachProofs(h, m, cert)
	if err != nil {
		for i := range m.Txs {
			m.Txs[i].Proof = nil
		}
		m.Cert = nil
	}
	return err
}

// relayProof gives m, a relay of one transaction, the proof and the
// certificate (cert, from HeaderCert) its relayer kept with it.
func relayProof(h nats.Header, m *casualdb.InboxMsg, cert []byte) error {
	v := h.Get(HeaderProof)
	if v == "" || cert == nil {
		return errUnsigned
	}
	p, err := base64.StdEncoding.DecodeString(v)
	if err != nil {
		return fmt.Errorf("bad %s header: %w", HeaderProof, err)
	}
	m.Txs[0].Proof, m.Cert = p, cert
	return nil
}
