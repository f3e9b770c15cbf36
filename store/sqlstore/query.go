package sqlstore

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"
)

// Read-only protection. What a statement on the read-only pool can do is
// bounded by four independent layers; each one alone stops the writes
// listed in the tests, and each covers a gap of the others:
//
//  1. mode=ro in the file: URI. SQLite opens the main database read-only:
//     every write to it fails with SQLITE_READONLY whatever the SQL. It
//     does not cover ATTACH (which opens and creates other files read-
//     write) or the temp database, and VACUUM INTO creates its target file
//     before failing.
//  2. query_only(1), set by the DSN before any caller SQL. It refuses
//     writes to every database of the connection, but it is a PRAGMA:
//     "PRAGMA query_only=0" turns it off again (verified: it does, without
//     layer 3).
//  3. The SQLite authorizer (sqlite3_set_authorizer), which modernc.org/
//     sqlite exposes as AuthorizerRegisterer. It runs while a statement is
//     compiled and sees every table it reads or writes, every function, every
//     PRAGMA, ATTACH and transaction control. The policy (readOnlyPolicy) is
//     an allow list: SELECT, reads, recursive CTEs, functions except
//     load_extension and the like, a few schema-describing PRAGMAs, and
//     BEGIN/COMMIT/ROLLBACK (a read transaction, for several statements on
//     one snapshot).
//     Everything else (INSERT/UPDATE/DELETE in any form, including inside a
//     WITH, CREATE/DROP/ALTER incl. TEMP objects, ATTACH/DETACH (so also
//     VACUUM INTO, which attaches its target), PRAGMA assignments,
//     SAVEPOINT) is denied before anything runs. It is installed on
//     every connection of the pool by a connection hook of a private
//     sqlite.Driver, so it applies to all users of ReadOnly(), and to no
//     other connection in the process.
//  4. In Query, a statement classifier: exactly one statement, starting with
//     SELECT, WITH or VALUES (the driver would otherwise run every statement
//     of "SELECT 1; DELETE ..."). It gives the clear error for the common
//     case; the authorizer is what makes WITH ... INSERT fail.
//
// Plus per query: SQLITE_LIMIT_ATTACHED 0 and a 16 MiB value limit, a
// deadline (the driver interrupts the statement when the context ends: a
// progress handler plus sqlite3_interrupt), and a row and byte budget.
//
// Not available in this driver: sqlite3_stmt_readonly (no exported way to
// reach a statement handle); the authorizer subsumes it, since a statement
// is read-only exactly when it asks to write nothing. load_extension is off
// in SQLite by default and the authorizer denies the function besides.

// Query limits.
const (
	DefaultQueryRows    = 1000
	MaxQueryRows        = 100_000
	DefaultQueryTimeout = 5 * time.Second
	MaxQueryTimeout     = 5 * time.Minute
	maxQueryBytes       = 64 << 20 // result values, summed
	maxValueBytes       = 16 << 20 // SQLITE_LIMIT_LENGTH on the read-only pool
	maxQueryText        = 1 << 20
)

type connector struct {
	drv *sqlite.Driver
	dsn string
}

func (c connector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c connector) Driver() driver.Driver                        { return c.drv }

func openReadOnly(abs string) (*sql.DB, error) {
	drv := &sqlite.Driver{} // private: its hook reaches this pool only
	drv.RegisterConnectionHook(func(c sqlite.ExecQuerierContext, _ string) error {
		ar, ok := c.(sqlite.AuthorizerRegisterer)
		if !ok {
			return fmt.Errorf("read-only pool: driver connection %T has no authorizer", c)
		}
		return ar.RegisterAuthorizer(readOnlyPolicy(nil))
	})
	q := url.Values{}
	q.Set("mode", "ro")
	q.Add("_pragma", "busy_timeout(5000)")
	q.Add("_pragma", "query_only(1)")
	q.Set("_defensive", "1")
	db := sql.OpenDB(connector{drv: drv, dsn: fileURI(abs, q)})
	db.SetMaxOpenConns(8)
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(5 * time.Minute)
	if err := db.Ping(); err != nil {
		db.Close()
		return nil, fmt.Errorf("read-only pool: %w", err)
	}
	return db, nil
}

// ReadOnly returns the read-only connection pool: a separate *sql.DB on the
// same file, opened mode=ro with query_only and the read-only authorizer on
// every connection (see above). Statements that would write fail with
// SQLITE_READONLY or SQLITE_AUTH. BeginTx gives a read transaction: one
// WAL snapshot for several statements. The Store owns it: do not close it.
func (s *Store) ReadOnly() *sql.DB { return s.ro }

// denial records what the authorizer refused, for the error message, and,
// for a sandbox query (mask set), the masked columns it read as NULL.
type denial struct {
	mu     sync.Mutex
	what   string
	mask   bool
	masked []string
}

func (d *denial) ignore(table, column string) bool {
	if d == nil || !d.mask || !SandboxMasked[table][column] {
		return false
	}
	d.mu.Lock()
	if c := table + "." + column; !slices.Contains(d.masked, c) {
		d.masked = append(d.masked, c)
	}
	d.mu.Unlock()
	return true
}

// SandboxMasked are the columns a sandbox query (Query) reads as NULL:
// command lines, environments, and alert contexts (a rule's context may
// copy a command line). Operators see them through a reveal, which needs a
// reason and is in the ledger; the sandbox would otherwise be a way
// around masking. Conditions on them match nothing in the sandbox.
var SandboxMasked = map[string]map[string]bool{
	"processes":      {"argv": true, "cmdline": true},
	"process_events": {"argv": true, "cmdline": true, "env": true},
	"alerts":         {"context": true},
}

func (d *denial) set(what string) {
	if d == nil {
		return
	}
	d.mu.Lock()
	if d.what == "" {
		d.what = what
	}
	d.mu.Unlock()
}

func (d *denial) get() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.what
}

// Functions never allowed: they touch files or process memory.
var deniedFunctions = map[string]bool{
	"load_extension": true,
	"fts3_tokenizer": true, // the two-argument form takes a pointer
	"readfile":       true, // shell extensions, should they ever be linked in
	"writefile":      true,
	"edit":           true,
}

// PRAGMAs that only describe the schema; arguments name a table or index.
var readPragmas = map[string]bool{
	"table_info": true, "table_xinfo": true, "table_list": true, "index_list": true,
	"index_info": true, "index_xinfo": true, "foreign_key_list": true,
}

var authActionNames = map[sqlite.AuthorizerActionCode]string{
	sqlite.AuthCreateIndex: "CREATE INDEX", sqlite.AuthCreateTable: "CREATE TABLE",
	sqlite.AuthCreateTempIndex: "CREATE TEMP INDEX", sqlite.AuthCreateTempTable: "CREATE TEMP TABLE",
	sqlite.AuthCreateTempTrigger: "CREATE TEMP TRIGGER", sqlite.AuthCreateTempView: "CREATE TEMP VIEW",
	sqlite.AuthCreateTrigger: "CREATE TRIGGER", sqlite.AuthCreateView: "CREATE VIEW",
	sqlite.AuthDelete: "DELETE", sqlite.AuthDropIndex: "DROP INDEX", sqlite.AuthDropTable: "DROP TABLE",
	sqlite.AuthDropTempIndex: "DROP TEMP INDEX", sqlite.AuthDropTempTable: "DROP TEMP TABLE",
	sqlite.AuthDropTempTrigger: "DROP TEMP TRIGGER", sqlite.AuthDropTempView: "DROP TEMP VIEW",
	sqlite.AuthDropTrigger: "DROP TRIGGER", sqlite.AuthDropView: "DROP VIEW", sqlite.AuthInsert: "INSERT",
	sqlite.AuthPragma: "PRAGMA", sqlite.AuthTransaction: "transaction control", sqlite.AuthUpdate: "UPDATE",
	sqlite.AuthAttach: "ATTACH", sqlite.AuthDetach: "DETACH", sqlite.AuthAlterTable: "ALTER TABLE",
	sqlite.AuthReindex: "REINDEX", sqlite.AuthAnalyze: "ANALYZE", sqlite.AuthCreateVTable: "CREATE VIRTUAL TABLE",
	sqlite.AuthDropVTable: "DROP VIRTUAL TABLE", sqlite.AuthFunction: "function", sqlite.AuthSavepoint: "SAVEPOINT",
}

// readOnlyPolicy is the read-only pool's authorizer: an allow list. rec, if
// not nil, records the first refusal.
func readOnlyPolicy(rec *denial) sqlite.AuthorizerFn {
	return func(action sqlite.AuthorizerActionCode, arg1, arg2, dbName, _ string) sqlite.AuthorizerReturnCode {
		switch action {
		case sqlite.AuthRead:
			if rec.ignore(arg1, arg2) {
				return sqlite.AuthorizerIgnore
			}
			return sqlite.AuthorizerOK
		case sqlite.AuthSelect, sqlite.AuthRecursive:
			return sqlite.AuthorizerOK
		case sqlite.AuthTransaction:
			// BEGIN / COMMIT / ROLLBACK: a read transaction, for several
			// statements on one snapshot. A write one still cannot write.
			return sqlite.AuthorizerOK
		case sqlite.AuthFunction:
			if !deniedFunctions[strings.ToLower(arg2)] {
				return sqlite.AuthorizerOK
			}
		case sqlite.AuthPragma:
			if readPragmas[strings.ToLower(arg1)] {
				return sqlite.AuthorizerOK
			}
		}
		name := authActionNames[action]
		if name == "" {
			name = fmt.Sprintf("action %d", action)
		}
		what := name
		for _, a := range []string{arg1, arg2} {
			if a != "" {
				what += " " + a
			}
		}
		if dbName != "" {
			what += " (database " + dbName + ")"
		}
		rec.set(what)
		return sqlite.AuthorizerDeny
	}
}

// Result is what a sandbox query returns.
type Result struct {
	Cols      []string
	Rows      [][]any
	Truncated bool
	// Masked names the SandboxMasked columns the statement read, which it
	// saw as NULL ("table.column").
	Masked []string
}

// Query runs one read-only statement for the SQL sandbox on the read-only
// pool and returns at most maxRows rows (<= 0: DefaultQueryRows; capped at
// MaxQueryRows), with truncated set when there were more (or the values
// passed 64 MiB). The columns of SandboxMasked read as NULL (see Sandbox
// for which were). The statement is cancelled after timeout (<= 0:
// DefaultQueryTimeout; capped at MaxQueryTimeout) or when ctx ends; the
// error then wraps context.DeadlineExceeded or context.Canceled. A
// statement that is not a single SELECT / WITH / VALUES, or that would
// write anything, fails with ErrNotReadOnly, naming what was refused.
// Values are int64, float64, string, []byte or nil.
func (s *Store) Query(ctx context.Context, query string, args []any, maxRows int, timeout time.Duration) (cols []string, rows [][]any, truncated bool, err error) {
	res, err := s.Sandbox(ctx, query, args, maxRows, timeout)
	return res.Cols, res.Rows, res.Truncated, err
}

// Sandbox is Query, also naming the masked columns the statement read.
func (s *Store) Sandbox(ctx context.Context, query string, args []any, maxRows int, timeout time.Duration) (Result, error) {
	var res Result
	rec := &denial{mask: true}
	err := s.query(ctx, rec, query, args, maxRows, timeout, &res)
	res.Masked = rec.masked
	slices.Sort(res.Masked)
	if err != nil {
		return Result{}, err
	}
	return res, nil
}

func (s *Store) query(ctx context.Context, rec *denial, query string, args []any, maxRows int, timeout time.Duration, res *Result) error {
	if err := classify(query); err != nil {
		return fmt.Errorf("sqlstore: query: %w", err)
	}
	if maxRows <= 0 {
		maxRows = DefaultQueryRows
	}
	maxRows = min(maxRows, MaxQueryRows)
	if timeout <= 0 {
		timeout = DefaultQueryTimeout
	}
	timeout = min(timeout, MaxQueryTimeout)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	conn, err := s.ro.Conn(ctx)
	if err != nil {
		return fmt.Errorf("sqlstore: query: %w", err)
	}
	defer conn.Close()
	if err := setPolicy(conn, rec); err != nil {
		return fmt.Errorf("sqlstore: query: %w", err)
	}
	defer func() {
		// Back to the pool's plain policy. Should that fail, the sandbox's
		// stays, which denies the same but masks: the connection is
		// dropped from the pool instead of serving others.
		if err := setPolicy(conn, nil); err != nil {
			_ = conn.Raw(func(any) error { return driver.ErrBadConn })
		}
	}()
	for _, l := range [][2]int{{sqlite3.SQLITE_LIMIT_ATTACHED, 0}, {sqlite3.SQLITE_LIMIT_LENGTH, maxValueBytes}} {
		if _, err := sqlite.Limit(conn, l[0], l[1]); err != nil {
			return fmt.Errorf("sqlstore: query: set limit: %w", err)
		}
	}

	r, err := conn.QueryContext(ctx, query, args...)
	if err != nil {
		return queryErr(ctx, rec, err)
	}
	defer r.Close()
	if res.Cols, err = r.Columns(); err != nil {
		return queryErr(ctx, rec, err)
	}
	size := 0
	for r.Next() {
		if len(res.Rows) == maxRows || size > maxQueryBytes {
			res.Truncated = true
			break
		}
		vals := make([]any, len(res.Cols))
		ptrs := make([]any, len(res.Cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		if err := r.Scan(ptrs...); err != nil { // Scan into *any copies []byte
			return queryErr(ctx, rec, err)
		}
		for _, v := range vals {
			switch v := v.(type) {
			case string:
				size += len(v)
			case []byte:
				size += len(v)
			default:
				size += 8
			}
		}
		res.Rows = append(res.Rows, vals)
	}
	if err := r.Err(); err != nil {
		return queryErr(ctx, rec, err)
	}
	return nil
}

func setPolicy(conn *sql.Conn, rec *denial) error {
	return conn.Raw(func(dc any) error {
		ar, ok := dc.(sqlite.AuthorizerRegisterer)
		if !ok {
			return fmt.Errorf("driver connection %T has no authorizer", dc)
		}
		return ar.RegisterAuthorizer(readOnlyPolicy(rec))
	})
}

// queryErr names why a query failed: refused (the authorizer's record, or
// SQLite's read-only and auth codes), timed out, or the SQL error.
func queryErr(ctx context.Context, rec *denial, err error) error {
	if what := rec.get(); what != "" {
		return fmt.Errorf("sqlstore: query: %w: %s: %w", ErrNotReadOnly, what, err)
	}
	switch sqliteCode(err) {
	case sqlite3.SQLITE_READONLY, sqlite3.SQLITE_AUTH:
		return fmt.Errorf("sqlstore: query: %w: %w", ErrNotReadOnly, err)
	}
	if cerr := ctx.Err(); cerr != nil {
		return fmt.Errorf("sqlstore: query: %w (%w)", cerr, err)
	}
	return fmt.Errorf("sqlstore: query: %w", err)
}

// classify accepts exactly one statement that starts with SELECT, WITH or
// VALUES (comments and whitespace aside). It is a first, friendly filter;
// the authorizer is the enforcement.
func classify(q string) error {
	if len(q) > maxQueryText {
		return fmt.Errorf("%w: statement longer than %d bytes", ErrNotReadOnly, maxQueryText)
	}
	if strings.IndexByte(q, 0) >= 0 {
		return fmt.Errorf("%w: statement contains a NUL byte", ErrNotReadOnly)
	}
	first, n := scanStatements(q)
	if n == 0 {
		return fmt.Errorf("%w: empty statement", ErrNotReadOnly)
	}
	switch kw := strings.ToUpper(first); kw {
	case "SELECT", "WITH", "VALUES":
	default:
		return fmt.Errorf("%w: only SELECT, WITH and VALUES are allowed, not %s", ErrNotReadOnly, kw)
	}
	if n > 1 {
		return fmt.Errorf("%w: more than one statement", ErrNotReadOnly)
	}
	return nil
}

// scanStatements returns the first word of q and the number of non-empty
// statements in it, following SQLite's lexical rules for what hides a ';':
// '...' strings, "...", `...` and [...] identifiers, -- and /* */ comments.
func scanStatements(q string) (first string, n int) {
	inStmt := false
	for i := 0; i < len(q); {
		c := q[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			i++
			continue
		case c == '-' && i+1 < len(q) && q[i+1] == '-':
			if j := strings.IndexByte(q[i:], '\n'); j >= 0 {
				i += j + 1
			} else {
				i = len(q)
			}
			continue
		case c == '/' && i+1 < len(q) && q[i+1] == '*':
			if j := strings.Index(q[i+2:], "*/"); j >= 0 {
				i += j + 4
			} else {
				i = len(q)
			}
			continue
		case c == ';':
			inStmt = false
			i++
			continue
		}
		if !inStmt {
			inStmt = true
			n++
			if n == 1 {
				j := i
				for j < len(q) && (q[j] == '_' || q[j] >= 'a' && q[j] <= 'z' || q[j] >= 'A' && q[j] <= 'Z') {
					j++
				}
				first = q[i:j]
				if first == "" {
					first = q[i : i+1]
				}
			}
		}
		switch c {
		case '\'', '"', '`':
			i = quotedEnd(q, i, c)
		case '[':
			i = quotedEnd(q, i, ']')
		default:
			i++
		}
	}
	return first, n
}

// quotedEnd returns the index after the quote that closes the one at i; a
// doubled closing quote is an escaped one. Unterminated: len(q).
func quotedEnd(q string, i int, end byte) int {
	for j := i + 1; j < len(q); j++ {
		if q[j] == end {
			if end != ']' && j+1 < len(q) && q[j+1] == end {
				j++
				continue
			}
			return j + 1
		}
	}
	return len(q)
}
