package ship

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/casualdb/casualdb"
	"github.com/nats-io/nats.go/jetstream"
)

// Inbox holds other sites' transactions until apply has applied them.
type Inbox struct {
	site   casualdb.SiteID
	stream jetstream.Stream
	cons   jetstream.Consumer
}

// OpenInbox creates (or opens) the site's inbox and its apply consumer.
func OpenInbox(ctx context.Context, js jetstream.JetStream, site casualdb.SiteID) (*Inbox, error) {
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:       InboxStream(site),
		Subjects:   []string{"casualdb.in." + string(site) + ".>"},
		Storage:    jetstream.FileStorage,
		Replicas:   1,
		Retention:  jetstream.WorkQueuePolicy,
		Duplicates: 2 * time.Minute,
	})
	if err != nil {
		return nil, fmt.Errorf("open inbox %s: %w", InboxStream(site), err)
	}
	in := &Inbox{site: site, stream: st}
	if _, err := in.Reset(ctx); err != nil {
		return nil, err
	}
	return in, nil
}

// Reset starts apply's consumer afresh and returns it. Messages the
// previous reader had taken but not acknowledged (it stopped, crashed, or
// its run failed and is restarting in the same process) would wait for the
// acknowledgement timeout before coming again, and with them everything
// after them from the same origin. A work queue keeps every message until
// it is acknowledged, and apply is its only reader, so a new consumer gets
// them at once. Apply recognises what it had applied already. Call it
// before every run of apply, never while one runs.
func (i *Inbox) Reset(ctx context.Context) (jetstream.Consumer, error) {
	if err := i.stream.DeleteConsumer(ctx, "apply"); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("reset inbox consumer: %w", err)
	}
	cons, err := i.stream.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       "apply",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxAckPending: 8192,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("open inbox consumer: %w", err)
	}
	i.cons = cons
	return cons, nil
}

// Consumer is the durable consumer apply reads.
func (i *Inbox) Consumer() jetstream.Consumer { return i.cons }

// Pending returns how many messages wait in the inbox.
func (i *Inbox) Pending(ctx context.Context) (uint64, error) {
	info, err := i.stream.Info(ctx)
	if err != nil {
		return 0, fmt.Errorf("inbox info: %w", err)
	}
	return info.State.Msgs, nil
}
