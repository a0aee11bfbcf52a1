package casualdb

import "errors"

var (
	// ErrConfig marks an invalid configuration; the message names the key.
	ErrConfig = errors.New("invalid configuration")
	// ErrDatabaseSetup marks a database that is not fit for replication
	// (wal_level, privileges, settings); the message says what to change.
	ErrDatabaseSetup = errors.New("database not ready for replication")
	// ErrNoPrimaryKey marks a replicated table without a primary key.
	ErrNoPrimaryKey = errors.New("table has no primary key")
	// ErrGarbled marks a transport message that does not decode to a Tx.
	ErrGarbled = errors.New("garbled message")
	// ErrSchemaMismatch marks a change whose table or columns differ from the
	// local table's.
	ErrSchemaMismatch = errors.New("schema differs from origin")
	// ErrUnchangedToast marks an update whose unchanged TOASTed value is
	// needed but not known at this site.
	ErrUnchangedToast = errors.New("unchanged TOAST value not available")
	// ErrClosed is returned by components used after Close.
	ErrClosed = errors.New("closed")
)
