package ship

import (
	"context"
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

// OutboxConfig configures an Outbox.
type OutboxConfig struct {
	Site casualdb.SiteID
	// MaxBytes bounds the outbox; once full, capture stops (and the slot
	// retains WAL) rather than drop anything. Default 8 GiB; -1 unbounded.
	MaxBytes int64
}

// Outbox is the site's durable log of local transactions. It implements
// capture.Outbox.
type Outbox struct {
	site   casualdb.SiteID
	js     jetstream.JetStream
	stream jetstream.Stream
	epoch  string
}

// OpenOutbox creates (or opens) the outbox stream on the local server.
func OpenOutbox(ctx context.Context, js jetstream.JetStream, cfg OutboxConfig) (*Outbox, error) {
	if cfg.MaxBytes == 0 {
		cfg.MaxBytes = 8 << 30
	}
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
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
	return &Outbox{site: cfg.Site, js: js, stream: st, epoch: strconv.FormatInt(info.Created.UnixNano(), 10)}, nil
}

// Epoch identifies this incarnation of the outbox: sequences restart when a
// site's store is lost, and receivers must know.
func (o *Outbox) Epoch() string { return o.epoch }

// Append stores txs in order and returns once every one is durable, with
// the outbox sequence of the last.
func (o *Outbox) Append(ctx context.Context, txs []*casualdb.Tx) (uint64, error) {
	futs := make([]jetstream.PubAckFuture, 0, len(txs))
	for _, tx := range txs {
		m, err := o.message(tx)
		if err != nil {
			return 0, err
		}
		f, err := o.js.PublishMsgAsync(m)
		if err != nil {
			return 0, fmt.Errorf("append tx %s: %w", tx.ID(), err)
		}
		futs = append(futs, f)
	}
	var last uint64
	for i, f := range futs {
		select {
		case ack := <-f.Ok():
			if ack.Sequence <= last && !ack.Duplicate {
				return 0, fmt.Errorf("append tx %s: sequence %d after %d", txs[i].ID(), ack.Sequence, last)
			}
			last = ack.Sequence
			txs[i].Seq = ack.Sequence
		case err := <-f.Err():
			return 0, fmt.Errorf("append tx %s: %w", txs[i].ID(), err)
		case <-ctx.Done():
			return 0, fmt.Errorf("append tx %s: %w", txs[i].ID(), ctx.Err())
		}
	}
	return last, nil
}

// message builds the outbox message of tx.
func (o *Outbox) message(tx *casualdb.Tx) (*nats.Msg, error) {
	data, err := tx.Marshal()
	if err != nil {
		return nil, err
	}
	m := nats.NewMsg(OutboxSubject(o.site))
	m.Data = data
	m.Header.Set(HeaderLSN, strconv.FormatUint(tx.LSN, 10))
	m.Header.Set(HeaderCommit, strconv.FormatInt(tx.CommitTime.UnixMicro(), 10))
	m.Header.Set(nats.MsgIdHdr, tx.ID())
	return m, nil
}

// Publish implements capture.Outbox: it starts appending txs right after
// sequence after, numbering them after+1, after+2, ..., and returns without
// waiting for the server. Each message carries the sequence the stream must
// end at before it (Nats-Expected-Last-Sequence), so the outbox never holds
// a transaction out of order or twice: once one is refused (the outbox is
// full, say), every later one is refused too, and capture starts again from
// the last one stored.
func (o *Outbox) Publish(ctx context.Context, txs []*casualdb.Tx, after uint64) (wait func(context.Context) error, err error) {
	a := &appending{txs: txs, futs: make([]jetstream.PubAckFuture, 0, len(txs))}
	for i, tx := range txs {
		m, err := o.message(tx)
		if err != nil {
			return nil, err
		}
		tx.Seq = after + uint64(i) + 1
		f, err := o.js.PublishMsgAsync(m, jetstream.WithExpectLastSequence(after+uint64(i)))
		if err != nil {
			return nil, fmt.Errorf("append tx %s as outbox sequence %d: %w", tx.ID(), tx.Seq, err)
		}
		a.futs = append(a.futs, f)
	}
	return a.wait, nil
}

// appending is a Publish in flight.
type appending struct {
	txs  []*casualdb.Tx
	futs []jetstream.PubAckFuture
}

// wait returns once the outbox holds every transaction of the Publish, or
// the first error.
func (a *appending) wait(ctx context.Context) error {
	for i, f := range a.futs {
		tx := a.txs[i]
		select {
		case ack := <-f.Ok():
			if ack.Duplicate || ack.Sequence != tx.Seq {
				return fmt.Errorf("append tx %s: stored as outbox sequence %d (duplicate %t), not %d", tx.ID(), ack.Sequence, ack.Duplicate, tx.Seq)
			}
		case err := <-f.Err():
			return fmt.Errorf("append tx %s as outbox sequence %d: %w", tx.ID(), tx.Seq, err)
		case <-ctx.Done():
			return fmt.Errorf("append tx %s: %w", tx.ID(), ctx.Err())
		}
	}
	return nil
}

// Last implements capture.Outbox.
func (o *Outbox) Last(ctx context.Context) (uint64, uint64, error) {
	info, err := o.stream.Info(ctx)
	if err != nil {
		return 0, 0, fmt.Errorf("outbox info: %w", err)
	}
	if info.State.Msgs == 0 {
		return info.State.LastSeq, 0, nil
	}
	lsn, ok, err := o.LSN(ctx, info.State.LastSeq)
	if err == nil && !ok {
		err = fmt.Errorf("outbox last message %d: %w", info.State.LastSeq, jetstream.ErrMsgNotFound)
	}
	return info.State.LastSeq, lsn, err
}

// header reads one numeric header of the message at seq (ok false when the
// outbox does not hold it).
func (o *Outbox) header(ctx context.Context, seq uint64, name string) (v uint64, ok bool, err error) {
	m, err := o.stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return 0, false, nil
	}
	if err != nil {
		return 0, false, fmt.Errorf("outbox message %d: %w", seq, err)
	}
	v, err = strconv.ParseUint(m.Header.Get(name), 10, 64)
	if err != nil {
		return 0, false, fmt.Errorf("outbox message %d: header %s: %w", seq, name, err)
	}
	return v, true, nil
}

// Since implements capture.Outbox.
func (o *Outbox) Since(ctx context.Context, after uint64, max int) ([]*casualdb.Tx, error) {
	info, err := o.stream.Info(ctx)
	if err != nil {
		return nil, fmt.Errorf("outbox info: %w", err)
	}
	var out []*casualdb.Tx
	for seq := max64(after+1, info.State.FirstSeq); seq <= info.State.LastSeq && len(out) < max; seq++ {
		m, err := o.stream.GetMsg(ctx, seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("outbox message %d: %w", seq, err)
		}
		tx, err := casualdb.UnmarshalTx(m.Data)
		if err != nil {
			return nil, fmt.Errorf("outbox message %d: %w", seq, err)
		}
		tx.Seq = seq
		out = append(out, tx)
	}
	return out, nil
}

// CommitTime returns the origin commit time of the transaction at seq, or
// of the oldest one the outbox still holds above it when seq was purged;
// ok is false when there is none.
func (o *Outbox) CommitTime(ctx context.Context, seq uint64) (t time.Time, ok bool, err error) {
	info, err := o.stream.Info(ctx)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("outbox info: %w", err)
	}
	seq = max64(seq, info.State.FirstSeq)
	if info.State.Msgs == 0 || seq > info.State.LastSeq {
		return time.Time{}, false, nil
	}
	us, ok, err := o.header(ctx, seq, HeaderCommit)
	if !ok || err != nil {
		return time.Time{}, false, err
	}
	return time.UnixMicro(int64(us)), true, nil
}

// Purge removes every message below seq.
func (o *Outbox) Purge(ctx context.Context, below uint64) error {
	if err := o.stream.Purge(ctx, jetstream.WithPurgeSequence(below)); err != nil {
		return fmt.Errorf("purge outbox below %d: %w", below, err)
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

func max64(a, b uint64) uint64 {
	if a > b {
		return a
	}
	return b
}

// AckFloor returns the outbox sequence up to which peer's inbox has
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

// LSN returns the commit LSN of the transaction at seq (ok false when the
// outbox does not hold it).
func (o *Outbox) LSN(ctx context.Context, seq uint64) (uint64, bool, error) {
	return o.header(ctx, seq, HeaderLSN)
}
