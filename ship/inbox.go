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
	// Messages the previous run had taken but not acknowledged (it stopped
	// or crashed) would wait for the acknowledgement timeout before coming
	// again, and with them everything after them from the same origin. A
	// work queue keeps every message until it is acknowledged, and apply is
	// its only reader: start the consumer afresh, so that they come at once.
	// Apply recognises what it had applied already.
	if err := st.DeleteConsumer(ctx, "apply"); err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("reset inbox consumer: %w", err)
	}
	cons, err := st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{
		Durable:       "apply",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
		MaxAckPending: 8192,
		DeliverPolicy: jetstream.DeliverAllPolicy,
	})
	if err != nil {
		return nil, fmt.Errorf("open inbox consumer: %w", err)
	}
	return &Inbox{site: site, stream: st, cons: cons}, nil
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
