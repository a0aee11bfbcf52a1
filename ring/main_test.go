package ring

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package's tests if a goroutine outlives them: every
// goroutine the package starts must have an owner that stops it.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		// memberlist's Shutdown stops its probe scheduler but does not wait
		// for a probe in progress: probeNode waits for its ack until the
		// probe's deadline (one ProbeInterval) and then ends by itself. No
		// API of memberlist lets Membership.Close wait for it.
		goleak.IgnoreTopFunction("github.com/hashicorp/memberlist.(*Memberlist).probeNode"),
	)
}
