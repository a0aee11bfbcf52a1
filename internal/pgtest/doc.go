// Package pgtest starts throwaway PostgreSQL 15 servers and embedded NATS
// servers for tests, the `casualdb demo` command and the benchmark.
//
// A Server owns one postmaster process running in its own data directory,
// configured for logical replication and listening only on 127.0.0.1 with
// trust authentication. Everything the server writes, including its log, stays
// inside the data directory, so removing the directory removes every trace.
//
// PostgreSQL refuses to run as root. When the current process is root, initdb
// and postgres run as the `postgres` system user: the data directory is chowned
// to that user and its ancestors are given search permission (o+x) where they
// lack it.
//
// Kill sends SIGKILL to the postmaster and to each of its children (which
// call setsid, so no process group holds them all) and waits for them. On
// Linux the postmaster also gets SIGKILL when the thread that started it
// exits, so servers do not outlive a test binary that dies abruptly; its
// backends then exit by themselves.
//
// Options.FakeTime runs one server on a skewed wall clock (libfaketime,
// preloaded into the postmaster and so into every backend it forks), for
// tests of sites whose clocks disagree.
//
// The core (Start, StartNATS and their methods) does not depend on package
// testing; helpers.go holds the testing.TB wrappers. Server and NATS methods
// are safe for concurrent use.
package pgtest
