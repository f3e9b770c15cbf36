package rules

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"modernc.org/sqlite"
	sqlite3 "modernc.org/sqlite/lib"

	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

// agentSchema is the part of the center's schema (store/sqlstore, schema
// v1) that the agent keeps in memory for its local rules: the process table
// and the three event tables, same columns, same types, same indexes that
// rules lean on. It is a copy, not an import, because the agent must build
// it without creating a file (sqlstore.Open wants one) and sqlstore does not
// export its DDL; TestAgentSchemaMatchesStore fails when they drift.
const agentSchema = `
CREATE TABLE processes (
	host           TEXT NOT NULL,
	pid            INTEGER NOT NULL,
	start          INTEGER NOT NULL,
	ppid           INTEGER,
	pstart         INTEGER,
	comm           TEXT NOT NULL DEFAULT '',
	uid            INTEGER NOT NULL DEFAULT 0,
	gid            INTEGER NOT NULL DEFAULT 0,
	euid           INTEGER NOT NULL DEFAULT 0,
	egid           INTEGER NOT NULL DEFAULT 0,
	exe            TEXT NOT NULL DEFAULT '',
	argv           TEXT,
	cmdline        TEXT NOT NULL DEFAULT '',
	argv_truncated INTEGER NOT NULL DEFAULT 0,
	cwd            TEXT NOT NULL DEFAULT '',
	tty            TEXT NOT NULL DEFAULT '',
	cgroup_id      INTEGER NOT NULL DEFAULT 0,
	pid_ns         INTEGER NOT NULL DEFAULT 0,
	net_ns         INTEGER NOT NULL DEFAULT 0,
	mnt_ns         INTEGER NOT NULL DEFAULT 0,
	start_time     INTEGER,
	exit_time      INTEGER,
	exit_code      INTEGER,
	exit_signal    INTEGER,
	exit_core      INTEGER,
	seeded         INTEGER NOT NULL DEFAULT 0,
	execed         INTEGER NOT NULL DEFAULT 0,
	PRIMARY KEY (host, pid, start)
) STRICT, WITHOUT ROWID;
CREATE INDEX processes_parent ON processes (host, ppid, pstart);
CREATE INDEX processes_exit ON processes (exit_time) WHERE exit_time IS NOT NULL;

CREATE TABLE process_events (
	id             INTEGER PRIMARY KEY AUTOINCREMENT,
	host           TEXT NOT NULL,
	batch_seq      INTEGER NOT NULL,
	idx            INTEGER NOT NULL,
	seq            INTEGER NOT NULL,
	time           INTEGER NOT NULL,
	kind           TEXT NOT NULL CHECK (kind IN ('fork', 'exec', 'exit')),
	pid            INTEGER NOT NULL,
	start          INTEGER NOT NULL,
	ppid           INTEGER,
	pstart         INTEGER,
	comm           TEXT NOT NULL DEFAULT '',
	source         TEXT NOT NULL DEFAULT '',
	uid            INTEGER,
	gid            INTEGER,
	euid           INTEGER,
	egid           INTEGER,
	exe            TEXT,
	argv           TEXT,
	cmdline        TEXT,
	argv_truncated INTEGER,
	cwd            TEXT,
	tty            TEXT,
	cgroup_id      INTEGER,
	pid_ns         INTEGER,
	net_ns         INTEGER,
	mnt_ns         INTEGER,
	exit_code      INTEGER,
	exit_signal    INTEGER,
	exit_core      INTEGER,
	trace_id       TEXT,
	trace_seq      INTEGER,
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX process_events_proc ON process_events (host, pid, start);
CREATE INDEX process_events_time ON process_events (time);

CREATE TABLE network_events (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	seq       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	kind      TEXT NOT NULL CHECK (kind IN ('connect', 'accept', 'close', 'socket')),
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	ppid      INTEGER,
	pstart    INTEGER,
	comm      TEXT NOT NULL DEFAULT '',
	source    TEXT NOT NULL DEFAULT '',
	proto     INTEGER,
	family    INTEGER,
	sock_type INTEGER,
	src_ip    TEXT,
	src_port  INTEGER,
	dst_ip    TEXT,
	dst_port  INTEGER,
	mapped    INTEGER NOT NULL DEFAULT 0,
	result    INTEGER,
	trace_id  TEXT,
	trace_seq INTEGER,
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX network_events_proc ON network_events (host, pid, start);
CREATE INDEX network_events_time ON network_events (time);

CREATE TABLE file_events (
	id        INTEGER PRIMARY KEY AUTOINCREMENT,
	host      TEXT NOT NULL,
	batch_seq INTEGER NOT NULL,
	idx       INTEGER NOT NULL,
	seq       INTEGER NOT NULL,
	time      INTEGER NOT NULL,
	kind      TEXT NOT NULL CHECK (kind IN ('open', 'create', 'rename', 'unlink')),
	pid       INTEGER NOT NULL,
	start     INTEGER NOT NULL,
	comm      TEXT NOT NULL DEFAULT '',
	source    TEXT NOT NULL DEFAULT '',
	path      TEXT NOT NULL,
	path2     TEXT,
	flags     INTEGER,
	mode      INTEGER,
	inode     INTEGER,
	dev       INTEGER,
	result    INTEGER,
	trace_id  TEXT,
	trace_seq INTEGER,
	UNIQUE (host, batch_seq, idx)
) STRICT;
CREATE INDEX file_events_proc ON file_events (host, pid, start);
CREATE INDEX file_events_time ON file_events (time);
`

// agentTables are the tables agentSchema defines.
var agentTables = []string{"processes", "process_events", "network_events", "file_events"}

// AgentSchema returns the DDL of the agent's in-memory rule database.
func AgentSchema() string { return agentSchema }

// SchemaFromDB returns the DDL of an open database (tables, then indexes,
// in creation order), e.g. the center's through its read-only pool, so that
// Check validates a pack against exactly the schema it will run on.
func SchemaFromDB(ctx context.Context, db *sql.DB) (string, error) {
	rows, err := db.QueryContext(ctx, `SELECT sql FROM sqlite_schema
		WHERE sql IS NOT NULL AND name NOT LIKE 'sqlite\_%' ESCAPE '\' AND type IN ('table', 'index', 'view')
		ORDER BY type = 'index', rowid`)
	if err != nil {
		return "", fmt.Errorf("rules: read schema: %w", err)
	}
	defer rows.Close()
	var b strings.Builder
	for rows.Next() {
		var s string
		if err := rows.Scan(&s); err != nil {
			return "", fmt.Errorf("rules: read schema: %w", err)
		}
		b.WriteString(s)
		b.WriteString(";\n")
	}
	if err := rows.Err(); err != nil {
		return "", fmt.Errorf("rules: read schema: %w", err)
	}
	return b.String(), nil
}

// StoreSchema returns the center store's current DDL, by migrating a
// throwaway sqlstore database in a temporary directory (removed before it
// returns). It is for tools that have no center database at hand:
// `daemoneye rules check` and tests. (sqlstore does not export its DDL.)
func StoreSchema(ctx context.Context) (string, error) {
	dir, err := os.MkdirTemp("", "daemoneye-rules-schema-")
	if err != nil {
		return "", fmt.Errorf("rules: store schema: %w", err)
	}
	defer os.RemoveAll(dir)
	st, err := sqlstore.Open(filepath.Join(dir, "schema.db"), nil)
	if err != nil {
		return "", fmt.Errorf("rules: store schema: %w", err)
	}
	ddl, err := SchemaFromDB(ctx, st.ReadOnly())
	if cerr := st.Close(); err == nil && cerr != nil {
		err = cerr
	}
	return ddl, err
}

// Limits applied to every connection that evaluates rules.
const (
	maxValueBytes = 16 << 20 // SQLITE_LIMIT_LENGTH: no zeroblob(1e9)
	maxSQLBytes   = 1 << 20
)

// memDB is a private in-memory SQLite database on exactly one connection
// (a second connection to "file::memory:" would be a different, empty
// database). ddl runs on every connection the pool opens, so should
// database/sql ever replace the connection, the schema is there again;
// gen counts the connections opened, and a caller that keeps state about
// the contents (the agent's cursors) resets it when gen changes.
type memDB struct {
	*sql.DB
	mu  sync.Mutex
	gen int
}

func openMemDB(ddl string, pragmas ...string) (*memDB, error) {
	m := &memDB{}
	drv := &sqlite.Driver{}
	drv.RegisterConnectionHook(func(c sqlite.ExecQuerierContext, _ string) error {
		for _, p := range pragmas {
			if _, err := c.ExecContext(context.Background(), "PRAGMA "+p, nil); err != nil {
				return fmt.Errorf("pragma %s: %w", p, err)
			}
		}
		if _, err := c.ExecContext(context.Background(), ddl, nil); err != nil {
			return fmt.Errorf("load schema: %w", err)
		}
		m.mu.Lock()
		m.gen++
		m.mu.Unlock()
		return nil
	})
	m.DB = sql.OpenDB(memConnector{drv: drv, dsn: "file::memory:?_pragma=foreign_keys(0)"})
	m.SetMaxOpenConns(1)
	m.SetMaxIdleConns(1)
	m.SetConnMaxIdleTime(0)
	m.SetConnMaxLifetime(0)
	if err := m.Ping(); err != nil {
		m.Close()
		return nil, err
	}
	return m, nil
}

func (m *memDB) generation() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.gen
}

type memConnector struct {
	drv *sqlite.Driver
	dsn string
}

func (c memConnector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c memConnector) Driver() driver.Driver                        { return c.drv }

// limitConn applies the per-connection limits rules run under.
func limitConn(conn *sql.Conn) error {
	for _, l := range [][2]int{
		{sqlite3.SQLITE_LIMIT_ATTACHED, 0},
		{sqlite3.SQLITE_LIMIT_LENGTH, maxValueBytes},
		{sqlite3.SQLITE_LIMIT_SQL_LENGTH, maxSQLBytes},
	} {
		if _, err := sqlite.Limit(conn, l[0], l[1]); err != nil {
			return fmt.Errorf("set limit: %w", err)
		}
	}
	return nil
}
