package ship

import (
	"context"
	"fmt"
	"strconv"

	"github.com/casualdb/casualdb"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Append stores txs in order, one message each, and returns once every one
// is durable, with the sequence of the last; a transaction appended twice is
// stored once (de-duplicated by id). Capture uses Publish; Append remains for
// tests: it writes the outbox as sidecars before bundling did (a
// transaction a message), which the shipper and apply still read.
func (o *Outbox) Append(ctx context.Context, txs []*casualdb.Tx) (uint64, error) {
	futs := make([]jetstream.PubAckFuture, 0, len(txs))
	for _, tx := range txs {
		data, err := tx.Marshal()
		if err != nil {
			return 0, err
		}
		m := nats.NewMsg(OutboxSubject(o.site))
		m.Data = data
		m.Header.Set(HeaderLSN, strconv.FormatUint(tx.LSN, 10))
		m.Header.Set(HeaderCommit, strconv.FormatInt(tx.CommitTime.UnixMicro(), 10))
		m.Header.Set(HeaderID, tx.ID())
		m.Header.Set(nats.MsgIdHdr, tx.ID())
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
