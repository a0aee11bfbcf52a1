package apply

import (
	"context"
	"fmt"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/casualdb/casualdb/meta"
)

// decodeMsg returns the transactions m carries. What does not decode is
// parked (and counted) rather than applied: a whole message whose headers
// or framing are garbled, or one transaction of a bundle.
func (a *Applier) decodeMsg(ctx context.Context, m *casualdb.InboxMsg, d *delivery) ([]inMsg, error) {
	if m.Err != nil {
		return nil, a.parkGarbled(ctx, m, nil, m.Err)
	}
	now := time.Now()
	out := make([]inMsg, 0, len(m.Txs))
	for i := range m.Txs {
		e := &m.Txs[i]
		if e.Err != nil {
			if err := a.parkGarbled(ctx, m, e, e.Err); err != nil {
				return nil, err
			}
			continue
		}
		out = append(out, inMsg{d: d, origin: m.Origin, epoch: m.Epoch, seq: e.Seq, received: now, data: e.Data, tx: e.Tx, proof: e.Proof, cert: m.Cert})
	}
	if len(out) == 0 && len(m.Txs) > 0 {
		_ = m.Ack() // every transaction in it is parked
	}
	return out, nil
}

// parkGarbled parks e, a transaction of m that does not decode, or all of m
// (acknowledged then) when e is nil, and counts it.
func (a *Applier) parkGarbled(ctx context.Context, m *casualdb.InboxMsg, e *casualdb.InboxTx, cause error) error {
	p := meta.Parked{Origin: m.Origin, Reason: cause.Error()}
	if e != nil {
		p.Seq, p.Payload = e.Seq, e.Data
	} else {
		p.Seq, p.LSN, p.Payload = m.Seq, m.LSN, m.Data
	}
	if err := meta.Park(ctx, a.main, p); err != nil {
		_ = m.NakWithDelay(time.Second)
		return fmt.Errorf("apply: park garbled message: %w", err)
	}
	a.log.Warn("parked a message that does not decode", "origin", p.Origin, "seq", p.Seq, "err", cause)
	a.count(func(s *Stats) { s.Parked++; s.Garbled++ })
	if e == nil {
		_ = m.Ack()
	}
	return nil
}
