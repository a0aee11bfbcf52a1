// Package integration runs CasualDB end to end: real PostgreSQL servers,
// real casualdb sidecar processes (built from cmd/casualdb) with their
// embedded NATS servers, and faults injected by killing and restarting them.
package integration
