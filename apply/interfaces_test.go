package apply

import (
	"github.com/casualdb/casualdb/capture"
	"github.com/casualdb/casualdb/ship"
)

// The implementations of apply's interfaces, checked at compile time here:
// apply itself imports neither capture nor ship.
var (
	_ Capture = (*capture.Capturer)(nil)
	_ Inbox   = (*ship.Inbox)(nil)
)
