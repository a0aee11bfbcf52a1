package capture_test

import (
	"github.com/casualdb/casualdb/capture"
	"github.com/casualdb/casualdb/ship"
)

// The implementation of capture's Outbox, checked at compile time here:
// capture does not import ship.
var _ capture.Outbox = (*ship.Outbox)(nil)
