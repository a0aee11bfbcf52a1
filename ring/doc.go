// Package ring will own cluster membership (gossip through
// hashicorp/memberlist), the consistent-hash ring with virtual nodes, the
// preference lists of the sloppy quorum and the hints held for sites that
// are down (issue 4). Until then, peers are configured statically and each
// origin's outbox keeps every transaction for every peer.
package ring
