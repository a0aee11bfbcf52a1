// Package proxy will hold the PostgreSQL wire-protocol proxy (pgproto3) that
// unchanged clients may use instead of a direct connection, for waiting on a
// write quorum at COMMIT and routing to a live site (roadmap).
package proxy
