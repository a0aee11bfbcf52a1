# CasualDB. `make demo` and `make test` work on a fresh Debian machine with Go:
# they install PostgreSQL 15 first if it is missing.
GO       ?= go
PG_BIN   ?= /usr/lib/postgresql/15/bin
APT      := DEBIAN_FRONTEND=noninteractive apt-get
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: all build demo test test-short fuzz bench check-scale lint deps deps-test deps-bench clean

all: lint build test

build:
	$(GO) build -o bin/casualdb ./cmd/casualdb

# PostgreSQL 15 server binaries (and the postgres user they run as).
deps:
	@if [ ! -x $(PG_BIN)/postgres ] || ! id postgres >/dev/null 2>&1; then \
		echo "installing PostgreSQL 15"; \
		$(SUDO) $(APT) update -q && $(SUDO) $(APT) install -y -q postgresql-15 postgresql-contrib; \
	fi

# libfaketime, which the integration tests preload into one site's PostgreSQL
# to put its clock ahead of the others'. The tests fail without it.
deps-test: deps
	@if ! ls /usr/lib/*/faketime/libfaketime.so.1 >/dev/null 2>&1; then \
		echo "installing faketime"; \
		$(SUDO) $(APT) update -q && $(SUDO) $(APT) install -y -q faketime; \
	fi

# pglogical, the yardstick the benchmark measures against.
deps-bench: deps
	@if [ ! -f /usr/share/postgresql/15/extension/pglogical.control ]; then \
		echo "installing pglogical"; \
		$(SUDO) $(APT) update -q && $(SUDO) $(APT) install -y -q postgresql-15-pglogical || echo "pglogical unavailable: the benchmark runs without it"; \
	fi

demo: deps build
	./bin/casualdb demo

test: deps-test
	$(GO) test -race -count=1 -timeout 40m ./...
	$(MAKE) fuzz

# Each fuzz target for a bounded number of executions (bad input from the
# network and from operators: the wire decoder, the gossiped digest, the
# configuration, an inbox message's framing, a relay's proof, a message's
# signature headers), about 10 s each on a 2-core machine. A count, not a duration:
# Go 1.26's fuzz coordinator can fail a duration-bounded run at its deadline with
# "context deadline exceeded" and no failing input (golang/go#75804, fixed in
# Go 1.27), which once turned CI red. FUZZTIME overrides them all (a count such
# as 1000000x, or a duration, which may hit that race).
# A failing input is saved under testdata/fuzz and replays in every test run.
FUZZTIME ?=
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzUnmarshalTx$$' -fuzztime $(or $(FUZZTIME),300000x) .
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeDigest$$' -fuzztime $(or $(FUZZTIME),100000x) ./hint
	$(GO) test -run '^$$' -fuzz '^FuzzParseConfig$$' -fuzztime $(or $(FUZZTIME),60000x) ./node
	$(GO) test -run '^$$' -fuzz '^FuzzEntries$$' -fuzztime $(or $(FUZZTIME),60000x) ./ship
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeProof$$' -fuzztime $(or $(FUZZTIME),60000x) ./ship
	$(GO) test -run '^$$' -fuzz '^FuzzAttachProofs$$' -fuzztime $(or $(FUZZTIME),30000x) ./ship

test-short: deps-test
	$(GO) test -race -count=1 -short ./...

bench: deps-bench
	$(GO) run ./cmd/bench

# casualdb check over 1,000,000 rows on three local sites: what it takes and
# reads (not part of the test suite: loading and replicating takes minutes).
check-scale: deps-test
	CASUALDB_CHECK_ROWS=1000000 $(GO) test -count=1 -v -timeout 40m -run TestNode_CheckScale ./node/

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

clean:
	rm -rf bin
