// Package netproxy puts a controllable TCP link between a client and one
// server, for fault injection in tests: the integration harness routes each
// sidecar's connection to each peer's NATS through its own Proxy, so that the
// link "site i ships to site j" can be cut, held or healed on its own while
// the others flow.
//
// A Proxy listens on one address and, for every connection it accepts, dials
// its target and copies bytes both ways. Its state decides what happens:
//
//   - Up: bytes flow.
//   - Held: connections stay open and new ones are accepted and dialled, but
//     no byte moves in either direction; at Heal everything still buffered
//     is delivered in order. This delays delivery without the client seeing
//     an error (until its own timeouts fire).
//   - Cut: every open connection is reset (both ends, SO_LINGER 0, so bytes
//     in flight are lost and each end sees the connection fail at once), and
//     every new connection is accepted and reset at once, which a client sees
//     as the server being unreachable.
//
// A connection ends when either end closes or fails: the proxy then closes
// both ends in order (it does not forward half-closes), so what was sent
// before still arrives. Bytes read while Held stay in the proxy, at most one
// buffer per direction, and the rest waits in the kernel's socket buffers;
// so an end that closes during a hold, after sending, is noticed only at
// Heal, when what it sent is delivered late, as a slow network would.
//
// Every goroutine belongs to the Proxy: Close stops accepting, closes every
// connection, and waits for all of them. Every method is safe for concurrent
// use; the net package is the only dependency.
package netproxy
