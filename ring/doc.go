// Package ring places transactions for the sloppy quorum: a consistent-hash
// ring with virtual nodes over the sites (Ring), the preference list of N
// distinct sites for a transaction id (Ring.Preference), and where it is
// kept when some of those sites are down (Ring.Sloppy: the next live sites
// clockwise stand in, each keeping the transaction as a hint for the site it
// replaces).
//
// Every site holds every row (full replication): the ring decides only who
// is responsible for a transaction's durability. Placement is pure — the
// same members and id give the same answer at every site, with no I/O, no
// clock and no randomness — so that sites agree on hint holders without
// talking about it. Membership (who is live) is the caller's input.
package ring
