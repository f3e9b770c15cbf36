package sqlstore

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite"
)

// Errors callers branch on.
var (
	// ErrSchemaTooNew: the database was migrated by a newer binary.
	ErrSchemaTooNew = errors.New("schema too new")
	// ErrNotReadOnly: Query or the read-only pool refused a statement that
	// could change something.
	ErrNotReadOnly = errors.New("statement refused, not read-only")
	// ErrBatchConflict: a batch with this (host, seq) was ingested before
	// with a different Merkle root.
	ErrBatchConflict = errors.New("batch conflicts with the one stored under its (agent, seq)")
	// ErrNoLink: MarkFollowed named a link that does not exist.
	ErrNoLink = errors.New("no such link")
)

// Store is the center's SQL store. One writer connection, serialized by wmu
// (SQLite has one writer anyway; queueing in Go rather than on the file lock
// keeps busy_timeout for other processes), and a pool of read-only
// connections for every read.
type Store struct {
	path string
	log  *slog.Logger
	db   *sql.DB // the writer: one connection
	ro   *sql.DB // read-only pool, see ReadOnly
	now  func() time.Time

	wmu         sync.Mutex
	ckpt        *checkpointer
	stmts       *ingestStmts
	driverStmts driverStmts // the bulk inserts (ingest.go)
	reads       readStmts
	closeErr    error
	closed      sync.Once
}

// Pragmas of the writer connection. busy_timeout covers another process
// (a second center, the sqlite3 shell) holding the lock. cache_size is
// negative KiB. journal_size_limit keeps the WAL file from staying at its
// high-water mark after a burst.
var writerPragmas = []string{
	"busy_timeout(5000)",
	"journal_mode(WAL)",
	"synchronous(NORMAL)", // see the package doc: batches are durable in Pebble first
	"foreign_keys(1)",
	"cache_size(-65536)",
	"temp_store(MEMORY)",
	"journal_size_limit(67108864)",
	"wal_autocheckpoint(16384)", // walBackstopPages: the checkpointer goroutine does it (checkpoint.go)
}

// Open opens (creating if needed) the database at path and migrates it to
// the current schema. path must name a file: the read-only pool opens the
// same file separately.
func Open(path string, log *slog.Logger) (*Store, error) {
	if path == "" || path == ":memory:" || strings.HasPrefix(path, "file:") {
		return nil, fmt.Errorf("sqlstore: open %q: want a plain file path", path)
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("sqlstore: open %q: %w", path, err)
	}
	s := &Store{path: abs, log: log.With("component", "sqlstore"), now: time.Now}

	q := url.Values{}
	for _, p := range writerPragmas {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate") // writers take the lock at BEGIN, never upgrade into SQLITE_BUSY
	q.Set("_defensive", "1")
	s.db, err = sql.Open("sqlite", fileURI(abs, q))
	if err != nil {
		return nil, fmt.Errorf("sqlstore: open %s: %w", abs, err)
	}
	s.db.SetMaxOpenConns(1)
	s.db.SetMaxIdleConns(1)
	s.db.SetConnMaxIdleTime(0)
	s.db.SetConnMaxLifetime(0)

	ctx := context.Background()
	if err := s.checkWriter(ctx); err != nil {
		s.db.Close()
		return nil, err
	}
	from, to, err := migrate(ctx, s.db)
	if err != nil {
		s.db.Close()
		return nil, fmt.Errorf("sqlstore: open %s: %w", abs, err)
	}
	if from != to {
		s.log.Info("schema migrated", "path", abs, "from", from, "to", to)
	}
	if s.stmts, err = prepareIngest(ctx, s.db); err != nil {
		s.db.Close()
		return nil, fmt.Errorf("sqlstore: open %s: %w", abs, err)
	}
	if s.ro, err = openReadOnly(abs); err != nil {
		s.stmts.close()
		s.db.Close()
		return nil, fmt.Errorf("sqlstore: open %s: %w", abs, err)
	}
	if err := s.reads.prepare(ctx, s.ro); err != nil {
		s.ro.Close()
		s.stmts.close()
		s.db.Close()
		return nil, fmt.Errorf("sqlstore: open %s: %w", abs, err)
	}
	if s.ckpt, err = startCheckpointer(abs, &s.wmu, s.log); err != nil {
		s.reads.close()
		s.ro.Close()
		s.stmts.close()
		s.db.Close()
		return nil, fmt.Errorf("sqlstore: open %s: %w", abs, err)
	}
	return s, nil
}

// checkWriter verifies that the pragmas took: journal_mode=WAL silently stays
// "delete" where the file system cannot do shared memory, and the read-only
// pool depends on WAL to read while the writer writes.
func (s *Store) checkWriter(ctx context.Context) error {
	var mode string
	if err := s.db.QueryRowContext(ctx, "PRAGMA journal_mode").Scan(&mode); err != nil {
		return fmt.Errorf("sqlstore: open %s: %w", s.path, err)
	}
	if !strings.EqualFold(mode, "wal") {
		return fmt.Errorf("sqlstore: open %s: journal_mode is %q, want wal", s.path, mode)
	}
	var fk, sync int
	if err := s.db.QueryRowContext(ctx, "SELECT foreign_keys, synchronous FROM pragma_foreign_keys, pragma_synchronous").Scan(&fk, &sync); err != nil {
		return fmt.Errorf("sqlstore: open %s: %w", s.path, err)
	}
	if fk != 1 || sync != 1 {
		return fmt.Errorf("sqlstore: open %s: foreign_keys=%d synchronous=%d, want 1 and 1 (NORMAL)", s.path, fk, sync)
	}
	return nil
}

// fileURI builds a SQLite URI for an absolute path. The path is escaped the
// way SQLite's URI parser expects (RFC 3986 path, so '?', '#' and '%' in a
// file name survive).
func fileURI(abs string, q url.Values) string {
	u := url.URL{Scheme: "file", Path: abs, RawQuery: q.Encode()}
	// url.URL writes "file:///abs"; SQLite accepts that form (empty authority).
	return u.String()
}

// Path returns the database file's absolute path.
func (s *Store) Path() string { return s.path }

// Close closes both pools. The writer runs PRAGMA optimize first, which
// updates the planner statistics the session's queries showed a need for.
func (s *Store) Close() error {
	s.closed.Do(func() {
		var errs []error
		// Before taking wmu: the checkpointer may be waiting for it.
		if s.ckpt != nil {
			errs = append(errs, s.ckpt.close())
		}
		s.wmu.Lock()
		defer s.wmu.Unlock()
		s.reads.close()
		if s.ro != nil {
			errs = append(errs, s.ro.Close())
		}
		if s.stmts != nil {
			s.stmts.close()
		}
		errs = append(errs, s.driverStmts.close(context.Background(), s.db))
		if _, err := s.db.Exec("PRAGMA optimize"); err != nil {
			s.log.Warn("optimize at close failed", "err", err)
		}
		errs = append(errs, s.db.Close())
		if err := errors.Join(errs...); err != nil {
			s.closeErr = fmt.Errorf("sqlstore: close: %w", err)
		}
	})
	return s.closeErr
}

// sqliteCode returns the primary SQLite result code of err, or 0.
func sqliteCode(err error) int {
	var se *sqlite.Error
	if errors.As(err, &se) {
		return se.Code() & 0xff
	}
	return 0
}
