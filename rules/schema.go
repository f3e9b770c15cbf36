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

// agentTables are the tables the agent keeps in memory for its local rules:
// the center's own DDL for them (sqlstore.TableDDL), so the two never drift.
var agentTables = []string{"processes", "process_events", "network_events", "file_events"}

// agentSchema is the DDL of agentTables.
var agentSchema = sqlstore.TableDDL(agentTables...)

// AgentSchema is the schema of the agent's in-memory rule database.
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
