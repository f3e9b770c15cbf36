package rules

import (
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"

	"modernc.org/sqlite"
)

// ErrNotReadOnly is wrapped when a rule's SQL would change something.
var ErrNotReadOnly = errors.New("rule sql is not read-only")

// A rule is read-only by construction on the center, whose read-only pool
// refuses writes at four layers (see store/sqlstore). Where rules run on a
// connection that can write (Check's scratch databases, the agent's
// in-memory window), guard installs an allow-list authorizer for the
// duration of the rule's statement: SELECT, reads, recursive CTEs and
// functions except those that reach outside the database. Everything else
// (INSERT/UPDATE/DELETE in any position, CREATE/DROP/ALTER, ATTACH, PRAGMA,
// transaction control, SAVEPOINT) is denied while the statement compiles,
// before anything runs.

var deniedFunctions = map[string]bool{
	"load_extension": true, "fts3_tokenizer": true, "readfile": true, "writefile": true, "edit": true,
}

var authNames = map[sqlite.AuthorizerActionCode]string{
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

// denial records the first thing the authorizer refused.
type denial struct {
	mu   sync.Mutex
	what string
}

func (d *denial) get() string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.what
}

func (d *denial) policy() sqlite.AuthorizerFn {
	return func(action sqlite.AuthorizerActionCode, arg1, arg2, dbName, _ string) sqlite.AuthorizerReturnCode {
		switch action {
		case sqlite.AuthSelect, sqlite.AuthRead, sqlite.AuthRecursive:
			return sqlite.AuthorizerOK
		case sqlite.AuthFunction:
			if !deniedFunctions[strings.ToLower(arg2)] {
				return sqlite.AuthorizerOK
			}
		}
		what := authNames[action]
		if what == "" {
			what = fmt.Sprintf("action %d", action)
		}
		for _, a := range []string{arg1, arg2} {
			if a != "" {
				what += " " + a
			}
		}
		if dbName != "" && dbName != "main" {
			what += " (database " + dbName + ")"
		}
		d.mu.Lock()
		if d.what == "" {
			d.what = what
		}
		d.mu.Unlock()
		return sqlite.AuthorizerDeny
	}
}

// guard installs the read-only policy on conn and returns the function
// that removes it again (the connection is also used to write).
func guard(conn *sql.Conn) (*denial, func() error, error) {
	d := &denial{}
	set := func(fn sqlite.AuthorizerFn) error {
		return conn.Raw(func(dc any) error {
			ar, ok := dc.(sqlite.AuthorizerRegisterer)
			if !ok {
				return fmt.Errorf("driver connection %T has no authorizer", dc)
			}
			return ar.RegisterAuthorizer(fn)
		})
	}
	if err := set(d.policy()); err != nil {
		return nil, nil, err
	}
	return d, func() error { return set(nil) }, nil
}
