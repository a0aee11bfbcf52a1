package ship

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Headers carried by every shipped transaction.
const (
	HeaderSeq    = "Casualdb-Seq"    // origin outbox sequence
	HeaderLSN    = "Casualdb-Lsn"    // origin commit LSN
	HeaderCommit = "Casualdb-Commit" // origin commit time, Unix microseconds
	HeaderOrigin = "Casualdb-Origin" // origin site
	HeaderEpoch  = "Casualdb-Epoch"  // creation time of the origin's outbox
	HeaderID     = "Casualdb-Id"     // the transaction's id (casualdb.Tx.ID), in the outbox
)

// OutboxStream names a site's outbox stream.
func OutboxStream(site casualdb.SiteID) string { return "CASUALDB_OUT_" + string(site) }

// OutboxSubject is the subject of a site's outbox.
func OutboxSubject(site casualdb.SiteID) string { return "casualdb.out." + string(site) }

// InboxStream names a site's inbox stream.
func InboxStream(site casualdb.SiteID) string { return "CASUALDB_IN_" + string(site) }

// InboxSubject is the subject on which origin's transactions reach site.
func InboxSubject(site, origin casualdb.SiteID) string {
	return "casualdb.in." + string(site) + "." + string(origin)
}

// DefaultOutboxMaxBytes is OutboxConfig.MaxBytes's default: 8 GiB.
const DefaultOutboxMaxBytes = 8 << 30

// OutboxConfig configures an Outbox.
type OutboxConfig struct {
	Site casualdb.SiteID
	// MaxBytes bounds the outbox; once full, capture stops (and the slot
	// retains WAL) rather than drop anything. Default DefaultOutboxMaxBytes;
	// -1 unbounded.
	MaxBytes int64
	// Signer, when set, signs each message's transactions (HeaderSig), so
	// that a site keeping one as a hint can show its peers that this site
	// wrote it (see sign.go).
	Signer *Signer
}

// Outbox is the site's durable log of local transactions. It implements
// capture.Outbox.
type Outbox struct {
	site   casualdb.SiteID
	js     jetstream.JetStream
	stream jetstream.Stream
	epoch  string
	signer *Signer
	idKey  []byte // see IDPrefix
}

// OpenOutbox creates (or opens) the outbox stream on the local server.
func OpenOutbox(ctx context.Context, js jetstream.JetStream, cfg OutboxConfig) (*Outbox, error) {
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = DefaultOutboxMaxBytes
	}
	// The key of the message ids this site's shipments carry (IDPrefix),
	// kept in the stream's metadata, which only the site itself can read.
	idKey := ""
	if st, err := js.Stream(ctx, OutboxStream(cfg.Site)); err == nil {
		idKey = st.CachedInfo().Config.Metadata[metaIDKey]
	} else if !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("open outbox %s: %w", OutboxStream(cfg.Site), err)
	}
	if idKey == "" {
		b := make([]byte, 16)
		if _, err := rand.Read(b); err != nil {
			return nil, fmt.Errorf("open outbox: %w", err)
		}
		idKey = hex.EncodeToString(b)
	}
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Metadata:   map[string]string{metaIDKey: idKey},
		Name:       OutboxStream(cfg.Site),
		Subjects:   []string{OutboxSubject(cfg.Site)},
		Storage:    jetstream.FileStorage,
		Replicas:   1,
		Retention:  jetstream.LimitsPolicy,
		Discard:    jetstream.DiscardNew,
		MaxBytes:   cfg.MaxBytes,
		Duplicates: 2 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("open outbox %s: %w", OutboxStream(cfg.Site), err)
	}
	info := st.CachedInfo()
	return &Outbox{site: cfg.Site, js: js, stream: st, epoch: strconv.FormatInt(info.Created.UnixNano(), 10), signer: cfg.Signer, idKey: []byte(idKey)}, nil
}

// metaIDKey is the outbox stream's metadata key holding IDPrefix's key.
const metaIDKey = "casualdb_id_key"

// IDPrefix prefixes the message ids of what this site publishes into
// peer's inbox (its own transactions, and relays of others'). An inbox drops
// a message whose id it stored in the last two minutes, whoever published
// it: with ids anyone could compute, a peer could publish first under the
// id of another site's next message, and the inbox would drop the real one
// and acknowledge it (its sender then counts it delivered). The prefix is a
// keyed hash of the peer's name: a peer sees its own, never another's.
func (o *Outbox) IDPrefix(peer casualdb.SiteID) string {
	m := hmac.New(sha256.New, o.idKey)
	m.Write([]byte(peer))
	return hex.EncodeToString(m.Sum(nil)[:8]) + ":"
}

// Epoch identifies this incarnation of the outbox: sequences restart when a
// site's store is lost, and receivers must know.
func (o *Outbox) Epoch() string { return o.epoch }

// An outbox message carries one transaction or a bundle of consecutive ones,
// in the form of an inbox message (see Entries): HeaderSeq is the sequence
// of the first, HeaderBundle how many (when more than one), HeaderLSN the
// commit LSN of the last, HeaderCommit the commit time of the first, and
// HeaderID the id of the first. Transactions are numbered by their own
// sequence, gapless from 1 (casualdb.Tx.Seq: what apply, hints, gossip and
// W-durability count); the stream's sequence numbers messages. Capture
// stores each batch it captured as one message: the stream's per-message
// costs (storing, two deliveries and two acknowledgements per peer) were
// most of the origin sidecar's CPU when every transaction was a message.
//
// Messages of earlier versions carry one transaction each and no
// HeaderSeq: their transaction's sequence is the message's.

// span returns the transaction sequences a message holds, first to last.
func span(h nats.Header, msgSeq uint64) (first, last uint64, err error) {
	v := h.Get(HeaderSeq)
	if v == "" {
		return msgSeq, msgSeq, nil
	}
	first, err = strconv.ParseUint(v, 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: bad %s header %q", casualdb.ErrGarbled, HeaderSeq, v)
	}
	n := uint64(1)
	if b := h.Get(HeaderBundle); b != "" {
		if n, err = strconv.ParseUint(b, 10, 64); err != nil || n == 0 {
			return 0, 0, fmt.Errorf("%w: bad %s header %q", casualdb.ErrGarbled, HeaderBundle, b)
		}
	}
	return first, first + n - 1, nil
}

// outboxEntries returns the transactions of an outbox message.
func outboxEntries(h nats.Header, data []byte, msgSeq uint64) ([]Entry, error) {
	if h.Get(HeaderSeq) == "" {
		return []Entry{{Seq: msgSeq, Data: data}}, nil
	}
	return Entries(h, data)
}

// Publish implements capture.Outbox. It stores txs, whose Seq the caller has
// numbered consecutively, as bundles of at most maxBundleBytes, the first
// right after message afterMsg, and returns how many messages that takes
// without waiting for the server. Each message carries the message sequence
// the stream must end at before it (Nats-Expected-Last-Sequence), so the
// outbox never holds a transaction out of order or twice: once one message
// is refused (the outbox is full, say), every later one is refused too, and
// capture starts again from the last one stored. That makes the stream's
// de-duplication by message id needless here.
func (o *Outbox) Publish(ctx context.Context, txs []*casualdb.Tx, afterMsg uint64) (msgs uint64, wait func(context.Context) error, err error) {
	a := &appending{}
	for start := 0; start < len(txs); {
		var body []byte
		var signed [][]byte
		end := start
		for end < len(txs) && (end == start || len(body) < maxBundleBytes) {
			data, err := txs[end].Marshal()
			if err != nil {
				return 0, nil, err
			}
			if o.signer != nil {
				signed = append(signed, data)
			}
			if end == start && (end+1 == len(txs)) {
				body = data // alone: no framing
			} else {
				if end == start {
					body = make([]byte, 0, min(len(data)*(len(txs)-start), maxBundleBytes+len(data))+16)
				}
				body = AppendEntry(body, Entry{Seq: txs[end].Seq, Data: data})
			}
			end++
		}
		first, last := txs[start], txs[end-1]
		m := nats.NewMsg(OutboxSubject(o.site))
		m.Data = body
		m.Header.Set(HeaderSeq, strconv.FormatUint(first.Seq, 10))
		if n := end - start; n > 1 {
			m.Header.Set(HeaderBundle, strconv.Itoa(n))
		} else if len(txs) > start+1 {
			// Cut to one by the size bound: still framed.
			m.Header.Set(HeaderBundle, "1")
		}
		m.Header.Set(HeaderLSN, strconv.FormatUint(last.LSN, 10))
		m.Header.Set(HeaderCommit, strconv.FormatInt(first.CommitTime.UnixMicro(), 10))
		m.Header.Set(HeaderID, first.ID())
		if o.signer != nil {
			v, err := o.signer.SignRun(o.epoch, first.Seq, signed)
			if err != nil {
				return 0, nil, err
			}
			m.Header.Set(HeaderSig, v)
		}
		msgSeq := afterMsg + msgs + 1
		f, err := o.js.PublishMsgAsync(m, jetstream.WithExpectLastSequence(msgSeq-1))
		if err != nil {
			return 0, nil, fmt.Errorf("append txs %d..%d as outbox message %d: %w", first.Seq, last.Seq, msgSeq, err)
		}
		a.parts = append(a.parts, appendPart{fut: f, msgSeq: msgSeq, first: first.Seq, last: last.Seq})
		msgs++
		start = end
	}
	return msgs, a.wait, nil
}

// appending is a Publish in flight.
type appending struct {
	parts []appendPart
}

type appendPart struct {
	fut         jetstream.PubAckFuture
	msgSeq      uint64
	first, last uint64
}

// wait returns once the outbox holds every transaction of the Publish, or
// the first error.
func (a *appending) wait(ctx context.Context) error {
	for _, p := range a.parts {
		select {
		case ack := <-p.fut.Ok():
			if ack.Duplicate || ack.Sequence != p.msgSeq {
				return fmt.Errorf("append txs %d..%d: stored as outbox message %d (duplicate %t), not %d", p.first, p.last, ack.Sequence, ack.Duplicate, p.msgSeq)
			}
		case err := <-p.fut.Err():
			return fmt.Errorf("append txs %d..%d as outbox message %d: %w", p.first, p.last, p.msgSeq, err)
		case <-ctx.Done():
			return fmt.Errorf("append txs %d..%d: %w", p.first, p.last, ctx.Err())
		}
	}
	return nil
}

// Last implements capture.Outbox: the sequence and commit LSN of the newest
// stored transaction and the sequence of its message (zeros when the
// outbox is empty; lastTx and lastMsg stay when it was trimmed empty).
func (o *Outbox) Last(ctx context.Context) (lastTx, lastLSN, lastMsg uint64, err error) {
	info, err := o.stream.Info(ctx)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("outbox info: %w", err)
	}
	lastMsg = info.State.LastSeq
	if info.State.Msgs == 0 {
		// Trimmed empty: the message sequence goes on; the transactions'
		// is in the capture state.
		return 0, 0, lastMsg, nil
	}
	m, err := o.stream.GetMsg(ctx, lastMsg)
	if err != nil {
		return 0, 0, 0, fmt.Errorf("outbox message %d: %w", lastMsg, err)
	}
	if _, lastTx, err = span(m.Header, lastMsg); err != nil {
		return 0, 0, 0, fmt.Errorf("outbox message %d: %w", lastMsg, err)
	}
	if lastLSN, err = strconv.ParseUint(m.Header.Get(HeaderLSN), 10, 64); err != nil {
		return 0, 0, 0, fmt.Errorf("outbox message %d: header %s: %w", lastMsg, HeaderLSN, err)
	}
	return lastTx, lastLSN, lastMsg, nil
}

// MsgSeqOf returns the sequence of the message holding transaction txSeq;
// when the outbox no longer holds it (trimmed), the oldest message it holds
// (ok false); when it does not hold it yet, ok is false and msgSeq 0. It
// searches by halves (each step fetches one message).
func (o *Outbox) MsgSeqOf(ctx context.Context, txSeq uint64) (msgSeq uint64, ok bool, err error) {
	info, err := o.stream.Info(ctx)
	if err != nil {
		return 0, false, fmt.Errorf("outbox info: %w", err)
	}
	lo, hi := info.State.FirstSeq, info.State.LastSeq
	if info.State.Msgs == 0 || lo > hi {
		return 0, false, nil
	}
	for lo <= hi {
		mid := lo + (hi-lo)/2
		m, err := o.stream.GetMsg(ctx, mid, jetstream.WithGetMsgSubject(OutboxSubject(o.site)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			// Nothing at or after mid (purged meanwhile): look below.
			hi = mid - 1
			continue
		}
		if err != nil {
			return 0, false, fmt.Errorf("outbox message %d: %w", mid, err)
		}
		seq := m.Sequence // the message at or after mid
		first, last, err := span(m.Header, seq)
		if err != nil {
			return 0, false, fmt.Errorf("outbox message %d: %w", seq, err)
		}
		switch {
		case txSeq < first:
			if mid == info.State.FirstSeq || seq == info.State.FirstSeq {
				return seq, false, nil // trimmed: the oldest held
			}
			hi = mid - 1
		case txSeq > last:
			lo = seq + 1
		default:
			return seq, true, nil
		}
	}
	if lo > info.State.LastSeq {
		return 0, false, nil // not there yet
	}
	return lo, false, nil
}

// Since implements capture.Outbox: up to max stored transactions with
// sequence above after, in order, with Seq set, and the sequence of the
// message holding the last of them.
func (o *Outbox) Since(ctx context.Context, after uint64, max int) ([]*casualdb.Tx, uint64, error) {
	msgSeq, _, err := o.MsgSeqOf(ctx, after+1)
	if err != nil || msgSeq == 0 {
		return nil, 0, err
	}
	info, err := o.stream.Info(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("outbox info: %w", err)
	}
	var out []*casualdb.Tx
	var lastMsg uint64
	for seq := msgSeq; seq <= info.State.LastSeq && len(out) < max; seq++ {
		m, err := o.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, 0, fmt.Errorf("outbox message %d: %w", seq, err)
		}
		entries, err := outboxEntries(m.Header, m.Data, seq)
		if err != nil {
			return nil, 0, fmt.Errorf("outbox message %d: %w", seq, err)
		}
		for _, e := range entries {
			if e.Seq <= after {
				continue
			}
			tx, err := casualdb.UnmarshalTx(e.Data)
			if err != nil {
				return nil, 0, fmt.Errorf("outbox message %d, tx %d: %w", seq, e.Seq, err)
			}
			tx.Seq = e.Seq
			out = append(out, tx)
		}
		lastMsg = seq
	}
	return out, lastMsg, nil
}

// tx returns the stored transaction txSeq (ok false when the outbox does
// not hold it).
func (o *Outbox) tx(ctx context.Context, txSeq uint64) (*casualdb.Tx, bool, error) {
	msgSeq, ok, err := o.MsgSeqOf(ctx, txSeq)
	if err != nil || !ok {
		return nil, false, err
	}
	m, err := o.stream.GetMsg(ctx, msgSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, fmt.Errorf("outbox message %d: %w", msgSeq, err)
	}
	entries, err := outboxEntries(m.Header, m.Data, msgSeq)
	if err != nil {
		return nil, false, fmt.Errorf("outbox message %d: %w", msgSeq, err)
	}
	for _, e := range entries {
		if e.Seq == txSeq {
			tx, err := casualdb.UnmarshalTx(e.Data)
			if err != nil {
				return nil, false, fmt.Errorf("outbox message %d, tx %d: %w", msgSeq, txSeq, err)
			}
			return tx, true, nil
		}
	}
	return nil, false, nil
}

// CommitTime returns the origin commit time of transaction txSeq, or of the
// oldest one the outbox still holds above it when it was trimmed; ok is
// false when there is none.
func (o *Outbox) CommitTime(ctx context.Context, txSeq uint64) (t time.Time, ok bool, err error) {
	msgSeq, held, err := o.MsgSeqOf(ctx, txSeq)
	if err != nil || msgSeq == 0 {
		return time.Time{}, false, err
	}
	if held {
		tx, ok, err := o.tx(ctx, txSeq)
		if err != nil || !ok {
			return time.Time{}, false, err
		}
		return tx.CommitTime, true, nil
	}
	m, err := o.stream.GetMsg(ctx, msgSeq)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("outbox message %d: %w", msgSeq, err)
	}
	us, err := strconv.ParseInt(m.Header.Get(HeaderCommit), 10, 64)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("outbox message %d: header %s: %w", msgSeq, HeaderCommit, err)
	}
	return time.UnixMicro(us), true, nil
}

// LSN returns the commit LSN of transaction txSeq (ok false when the outbox
// does not hold it).
func (o *Outbox) LSN(ctx context.Context, txSeq uint64) (uint64, bool, error) {
	tx, ok, err := o.tx(ctx, txSeq)
	if err != nil || !ok {
		return 0, false, err
	}
	return tx.LSN, true, nil
}

// lastTxOf returns the sequence of the last transaction in messages up to
// msgSeq (0 when none): what a consumer's acknowledgement floor means in
// transactions.
func (o *Outbox) lastTxOf(ctx context.Context, msgSeq uint64) (uint64, error) {
	if msgSeq == 0 {
		return 0, nil
	}
	m, err := o.stream.GetMsg(ctx, msgSeq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		// Trimmed: everything below the oldest held message.
		info, err := o.stream.Info(ctx)
		if err != nil {
			return 0, fmt.Errorf("outbox info: %w", err)
		}
		if info.State.Msgs == 0 || msgSeq >= info.State.LastSeq {
			return 0, nil // unknown: the caller keeps what it knows
		}
		first, err := o.stream.GetMsg(ctx, info.State.FirstSeq)
		if err != nil {
			return 0, fmt.Errorf("outbox message %d: %w", info.State.FirstSeq, err)
		}
		f, _, err := span(first.Header, info.State.FirstSeq)
		if err != nil || f == 0 {
			return 0, err
		}
		return f - 1, nil
	}
	if err != nil {
		return 0, fmt.Errorf("outbox message %d: %w", msgSeq, err)
	}
	_, last, err := span(m.Header, msgSeq)
	return last, err
}

// Purge removes every message below msgSeq.
func (o *Outbox) Purge(ctx context.Context, belowMsg uint64) error {
	if err := o.stream.Purge(ctx, jetstream.WithPurgeSequence(belowMsg)); err != nil {
		return fmt.Errorf("purge outbox below message %d: %w", belowMsg, err)
	}
	return nil
}

// Pending returns the number of messages and bytes the outbox holds.
func (o *Outbox) Pending(ctx context.Context) (msgs, bytes uint64, err error) {
	info, err := o.stream.Info(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("outbox info: %w", err)
	}
	return info.State.Msgs, info.State.Bytes, nil
}

// AckFloor returns the outbox message sequence up to which peer's inbox has
// acknowledged everything (0 when the peer has no consumer).
func (o *Outbox) AckFloor(ctx context.Context, peer casualdb.SiteID) (uint64, error) {
	c, err := o.stream.Consumer(ctx, ConsumerName(peer))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("consumer of %s: %w", peer, err)
	}
	info, err := c.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("consumer of %s: %w", peer, err)
	}
	return info.AckFloor.Stream, nil
}
