package pgtest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// fakeTimeLibEnv names the libfaketime library to preload, overriding the
// search of fakeTimeLibGlobs.
const fakeTimeLibEnv = "CASUALDB_FAKETIME_LIB"

// fakeTimeLibGlobs are where Debian's package faketime (and a build from
// source) put the single-threaded library; the first match wins.
var fakeTimeLibGlobs = []string{
	"/usr/lib/*-linux-gnu*/faketime/libfaketime.so.1",
	"/usr/lib/faketime/libfaketime.so.1",
	"/usr/local/lib/faketime/libfaketime.so.1",
}

// ErrNoFakeTime reports that Options.FakeTime was set but libfaketime is not
// installed.
var ErrNoFakeTime = errors.New("libfaketime not found: install the Debian package faketime " +
	"(apt-get install faketime; `make test` does it) or set " + fakeTimeLibEnv)

// fakeTimeOffset is the only FAKETIME syntax Options.FakeTime accepts: a
// relative offset from the real clock, in seconds or with one of
// libfaketime's multipliers (m, h, d, y). Absolute and "start at" times
// would freeze or reset the clock of every forked backend.
var fakeTimeOffset = regexp.MustCompile(`^[+-][0-9]+(\.[0-9]+)?[mhdy]?$`)

// FakeTimeLib returns the path of libfaketime.so.1: $CASUALDB_FAKETIME_LIB
// when set, else the first of the usual install locations that exists. The
// error wraps ErrNoFakeTime when there is none.
func FakeTimeLib() (string, error) {
	if p := os.Getenv(fakeTimeLibEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("%w (%s=%s: %w)", ErrNoFakeTime, fakeTimeLibEnv, p, err)
		}
		return p, nil
	}
	for _, g := range fakeTimeLibGlobs {
		if m, _ := filepath.Glob(g); len(m) > 0 {
			return m[0], nil
		}
	}
	return "", fmt.Errorf("%w (looked for %s)", ErrNoFakeTime, strings.Join(fakeTimeLibGlobs, ", "))
}

// fakeTimeEnv returns the environment that makes a process and its children
// see the wall clock offset by offset: LD_PRELOAD (put before any preload in
// base, the environment it extends) and FAKETIME. The monotonic clock stays
// real: PostgreSQL measures timeouts and intervals with it, and a constant
// offset gains nothing there.
func fakeTimeEnv(offset string, base []string) ([]string, error) {
	if !fakeTimeOffset.MatchString(offset) {
		return nil, fmt.Errorf("fake time %q: not a relative offset such as +1h, -90 or +2.5d", offset)
	}
	lib, err := FakeTimeLib()
	if err != nil {
		return nil, err
	}
	preload := lib
	for _, kv := range base { // the last one is the one exec uses
		if v, ok := strings.CutPrefix(kv, "LD_PRELOAD="); ok && v != "" {
			preload = lib + ":" + v
		}
	}
	return []string{
		"LD_PRELOAD=" + preload,
		"FAKETIME=" + offset,
		"FAKETIME_DONT_FAKE_MONOTONIC=1",
	}, nil
}
