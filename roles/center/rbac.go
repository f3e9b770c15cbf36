package center

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"database/sql"
	"database/sql/driver"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path/filepath"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/crypto/argon2"
	"modernc.org/sqlite"

	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// Role is an operator's authority in the API. Roles are ordered: each one
// holds every right of the ones below it, so admin implies all.
type Role int

// Operator roles, lowest first. RoleNone is never stored; it is what an
// unknown role name in the operators table parses to, and it allows nothing.
const (
	RoleNone Role = iota
	RoleViewer
	RoleAnalyst
	RoleApprover
	RoleAdmin
)

var roleNames = [...]string{"none", "viewer", "analyst", "approver", "admin"}

func (r Role) String() string {
	if r >= 0 && int(r) < len(roleNames) {
		return roleNames[r]
	}
	return fmt.Sprintf("role(%d)", int(r))
}

// MarshalText makes a Role a JSON string.
func (r Role) MarshalText() ([]byte, error) { return []byte(r.String()), nil }

// UnmarshalText parses a role name (ParseRole).
func (r *Role) UnmarshalText(b []byte) error {
	v, err := ParseRole(string(b))
	if err != nil {
		return err
	}
	*r = v
	return nil
}

// ParseRole parses viewer, analyst, approver or admin.
func ParseRole(s string) (Role, error) {
	for i, n := range roleNames {
		if i > 0 && n == s {
			return Role(i), nil
		}
	}
	return RoleNone, fmt.Errorf("unknown operator role %q (want viewer, analyst, approver or admin)", s)
}

// Allows reports whether an operator with role r may do what needs min.
func (r Role) Allows(min Role) bool { return r > RoleNone && r >= min }

// Errors callers of Operators branch on.
var (
	ErrOperatorExists  = errors.New("operator already exists")
	ErrNoOperator      = errors.New("no such operator")
	ErrLastAdmin       = errors.New("that would leave no active admin")
	ErrWeakPassword    = fmt.Errorf("password must be %d to %d bytes long", MinPasswordLen, MaxPasswordLen)
	ErrBadCredentials  = errors.New("wrong operator name or password")
	ErrOperatorBlocked = errors.New("operator disabled")
	ErrInvalidOperator = errors.New("invalid operator")
)

// Password bounds. The upper one caps the work an attacker can make the KDF
// do per attempt.
const (
	MinPasswordLen = 12
	MaxPasswordLen = 1024
)

// Operator is an operators row, with whether a local password is set.
type Operator struct {
	ID          string     `json:"id"`
	Name        string     `json:"name"`
	Role        Role       `json:"role"`
	Created     time.Time  `json:"created"`
	Disabled    *time.Time `json:"disabled,omitempty"`
	HasPassword bool       `json:"has_password"`
}

// Active reports whether the operator may use the API.
func (o Operator) Active() bool { return o.Disabled == nil }

// Operators manages the operators of a center: the operators table of the
// center's SQL store (center.db: id, name, role, disabled) and their local
// accounts in accounts.db beside it.
//
// The password hashes live in a separate file on purpose: the read-only SQL
// sandbox (POST /api/v1/query) can read every table of center.db, and
// ATTACH is refused there, so a hash in center.db would be one SELECT away
// from every analyst. accounts.db is attached only to this type's own
// connections, as schema "acct". It also holds the audit outbox: changes
// made by `daemoneye operator` while the center (which holds the ledger's
// write lock) runs, or while it is down, wait there until the API appends
// them to the ledger (DrainOutbox).
type Operators struct {
	db   *sql.DB // center.db + acct; writes serialized by wmu
	wmu  sync.Mutex
	now  func() time.Time
	kdf  argonParams
	hash chan struct{} // bounds concurrent KDF runs (64 MiB each)
}

// AccountsFile is the name of the local-accounts database, in the
// directory of center.db.
const AccountsFile = "accounts.db"

// accountsSchema is accounts.db, version 1 (PRAGMA acct.user_version).
// Its own file, so its own version counter: center.db's belongs to sqlstore.
const accountsSchema = `
CREATE TABLE acct.operator_accounts (
	id            TEXT PRIMARY KEY,   -- operators.id in center.db
	password_hash TEXT NOT NULL,      -- PHC string: $argon2id$v=19$m=...,t=...,p=...$salt$hash
	changed       INTEGER NOT NULL    -- Unix ns
) STRICT;
CREATE TABLE acct.audit_outbox (
	id      INTEGER PRIMARY KEY AUTOINCREMENT,
	time    INTEGER NOT NULL,
	kind    TEXT NOT NULL,
	actor   TEXT NOT NULL,
	payload TEXT NOT NULL CHECK (json_valid(payload))
) STRICT;
`

// watchesSchema is version 2 of accounts.db: the watch rules (watch.go).
// They are the center's own detection state, kept where the SQL sandbox
// cannot read or change them, like the rest of this file.
const watchesSchema = `
CREATE TABLE acct.watches (
	id           INTEGER PRIMARY KEY AUTOINCREMENT,
	match        TEXT NOT NULL CHECK (match IN ('exe', 'cmdline')),
	exe          TEXT NOT NULL,     -- the image path every match has
	argv         TEXT,              -- match cmdline: the exact argv, JSON array as process_events.argv
	trace        INTEGER NOT NULL,  -- 1: a match also requests a focused trace (center.rules.trace_policy)
	severity     TEXT NOT NULL,
	since_id     INTEGER NOT NULL,  -- process_events.id when created: only later execs match
	created      INTEGER NOT NULL,  -- Unix ns
	created_by   TEXT NOT NULL,
	reason       TEXT NOT NULL,
	origin_host  TEXT NOT NULL,     -- the process it was made from
	origin_pid   INTEGER NOT NULL,
	origin_start INTEGER NOT NULL
) STRICT;
`

// OpenOperators opens the operators of the center whose SQL store is the
// file centerDB (sqlstore.Store.Path; the store must have been opened once
// so that its schema exists), creating accounts.db beside it if needed.
func OpenOperators(centerDB string) (*Operators, error) {
	abs, err := filepath.Abs(centerDB)
	if err != nil {
		return nil, fmt.Errorf("operators: %w", err)
	}
	acct := filepath.Join(filepath.Dir(abs), AccountsFile)
	drv := &sqlite.Driver{} // private: its hook attaches accounts.db to these connections only
	drv.RegisterConnectionHook(func(c sqlite.ExecQuerierContext, _ string) error {
		ctx := context.Background()
		if _, err := c.ExecContext(ctx, `ATTACH DATABASE ? AS acct`, []driver.NamedValue{{Ordinal: 1, Value: acct}}); err != nil {
			return fmt.Errorf("attach %s: %w", acct, err)
		}
		_, err := c.ExecContext(ctx, `PRAGMA acct.journal_mode = WAL`, nil)
		return err
	})
	q := url.Values{}
	for _, p := range []string{"busy_timeout(10000)", "foreign_keys(1)", "synchronous(FULL)"} {
		q.Add("_pragma", p)
	}
	q.Set("_txlock", "immediate")
	q.Set("_defensive", "1")
	db := sql.OpenDB(sqliteConnector{drv: drv, dsn: fileURI(abs, q)})
	db.SetMaxOpenConns(4)
	db.SetMaxIdleConns(4)
	db.SetConnMaxIdleTime(10 * time.Minute)
	o := &Operators{db: db, now: time.Now, kdf: defaultKDF, hash: make(chan struct{}, 2)}
	if err := o.migrate(context.Background()); err != nil {
		db.Close()
		return nil, err
	}
	return o, nil
}

// fileURI is a SQLite file: URI for an absolute path (see sqlstore).
func fileURI(abs string, q url.Values) string {
	u := url.URL{Scheme: "file", Path: abs, RawQuery: q.Encode()}
	return u.String()
}

type sqliteConnector struct {
	drv *sqlite.Driver
	dsn string
}

func (c sqliteConnector) Connect(context.Context) (driver.Conn, error) { return c.drv.Open(c.dsn) }
func (c sqliteConnector) Driver() driver.Driver                        { return c.drv }

func (o *Operators) migrate(ctx context.Context) error {
	o.wmu.Lock()
	defer o.wmu.Unlock()
	tx, err := o.db.BeginTx(ctx, nil)
	if err != nil {
		return fmt.Errorf("operators: open: %w", err)
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	var n int
	if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM main.sqlite_schema WHERE type = 'table' AND name IN ('operators', 'approvals', 'traces')`).Scan(&n); err != nil {
		return fmt.Errorf("operators: open: %w", err)
	}
	if n != 3 {
		return errors.New("operators: open: the center's SQL store has no operators, approvals and traces tables (open it with sqlstore first)")
	}
	var v int
	if err := tx.QueryRowContext(ctx, `PRAGMA acct.user_version`).Scan(&v); err != nil {
		return fmt.Errorf("operators: open: %w", err)
	}
	switch v {
	case 0:
		if _, err := tx.ExecContext(ctx, accountsSchema); err != nil {
			return fmt.Errorf("operators: migrate accounts.db: %w", err)
		}
		fallthrough
	case 1:
		if _, err := tx.ExecContext(ctx, watchesSchema); err != nil {
			return fmt.Errorf("operators: migrate accounts.db to version 2: %w", err)
		}
		if _, err := tx.ExecContext(ctx, `PRAGMA acct.user_version = 2`); err != nil {
			return fmt.Errorf("operators: migrate accounts.db: %w", err)
		}
	case 2:
		return nil
	default:
		return fmt.Errorf("operators: accounts.db schema version %d is newer than this binary's 2", v)
	}
	return tx.Commit()
}

// Close closes the connections.
func (o *Operators) Close() error { return o.db.Close() }

const operatorCols = `o.id, o.name, o.role, o.created, o.disabled, a.id IS NOT NULL`

func scanOperator(sc interface{ Scan(...any) error }) (Operator, error) {
	var (
		op       Operator
		role     string
		created  int64
		disabled sql.NullInt64
	)
	if err := sc.Scan(&op.ID, &op.Name, &role, &created, &disabled, &op.HasPassword); err != nil {
		return Operator{}, err
	}
	op.Role, _ = ParseRole(role) // an unknown role is RoleNone: no access
	op.Created = time.Unix(0, created).UTC()
	if disabled.Valid {
		t := time.Unix(0, disabled.Int64).UTC()
		op.Disabled = &t
	}
	return op, nil
}

// Get returns one operator.
func (o *Operators) Get(ctx context.Context, id string) (Operator, bool, error) {
	op, err := scanOperator(o.db.QueryRowContext(ctx, `SELECT `+operatorCols+`
		FROM main.operators o LEFT JOIN acct.operator_accounts a ON a.id = o.id WHERE o.id = ?`, id))
	if errors.Is(err, sql.ErrNoRows) {
		return Operator{}, false, nil
	}
	if err != nil {
		return Operator{}, false, fmt.Errorf("operators: get %s: %w", id, err)
	}
	return op, true, nil
}

// List returns every operator in id order.
func (o *Operators) List(ctx context.Context) ([]Operator, error) {
	rows, err := o.db.QueryContext(ctx, `SELECT `+operatorCols+`
		FROM main.operators o LEFT JOIN acct.operator_accounts a ON a.id = o.id ORDER BY o.id`)
	if err != nil {
		return nil, fmt.Errorf("operators: list: %w", err)
	}
	defer rows.Close()
	out := []Operator{}
	for rows.Next() {
		op, err := scanOperator(rows)
		if err != nil {
			return nil, fmt.Errorf("operators: list: %w", err)
		}
		out = append(out, op)
	}
	return out, rows.Err()
}

// NewOperator describes an operator to add.
type NewOperator struct {
	ID       string // the certificate name for certificate operators; pki.ValidateName rules
	Name     string // display name
	Role     Role
	Password string // "": no local account (certificate only)
}

// OperatorChange is a change to an operator; nil fields stay as they are.
type OperatorChange struct {
	Role     *Role
	Disabled *bool
	Password *string // "" removes the local account
}

// inTx runs f in a write transaction and records one audit entry before
// committing: with a, in the ledger (the change is rolled back if that
// fails); without, in the outbox in the same transaction.
func (o *Operators) inTx(ctx context.Context, a Auditor, kind, actor string, f func(*sql.Tx) (any, error)) error {
	o.wmu.Lock()
	defer o.wmu.Unlock()
	tx, err := o.db.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback() //nolint:errcheck // a no-op after Commit
	payload, err := f(tx)
	if err != nil {
		return err
	}
	if a != nil {
		if err := a.Audit(ctx, kind, actor, payload); err != nil {
			return fmt.Errorf("%w: %w", errAudit, err)
		}
	} else {
		p, err := json.Marshal(payload)
		if err != nil {
			return err
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO acct.audit_outbox (time, kind, actor, payload) VALUES (?, ?, ?, ?)`,
			o.now().UnixNano(), kind, actor, string(p)); err != nil {
			return err
		}
	}
	return tx.Commit()
}

// errAudit marks a change refused because the ledger could not record it.
var errAudit = errors.New("audit ledger unavailable")

// Add creates an operator (and its local account when a password is
// given). actor is who did it; with a nil Auditor the audit entry goes to
// the outbox (the command line).
func (o *Operators) Add(ctx context.Context, n NewOperator, actor string, a Auditor) (Operator, error) {
	if err := pki.ValidateName(n.ID); err != nil {
		return Operator{}, fmt.Errorf("%w: id: %w", ErrInvalidOperator, err)
	}
	if n.Role == RoleNone || n.Role > RoleAdmin {
		return Operator{}, fmt.Errorf("%w: role: want viewer, analyst, approver or admin", ErrInvalidOperator)
	}
	if len(n.Name) > 200 || !utf8.ValidString(n.Name) {
		return Operator{}, fmt.Errorf("%w: name: at most 200 bytes of UTF-8", ErrInvalidOperator)
	}
	var phc string
	if n.Password != "" {
		var err error
		if phc, err = o.hashPassword(ctx, n.Password); err != nil {
			return Operator{}, err
		}
	}
	now := o.now()
	err := o.inTx(ctx, a, "operator.add", actor, func(tx *sql.Tx) (any, error) {
		var exists int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM main.operators WHERE id = ?`, n.ID).Scan(&exists); err != nil {
			return nil, err
		}
		if exists > 0 {
			return nil, fmt.Errorf("%w: %s", ErrOperatorExists, n.ID)
		}
		if _, err := tx.ExecContext(ctx, `INSERT INTO main.operators (id, name, role, created) VALUES (?, ?, ?, ?)`,
			n.ID, n.Name, n.Role.String(), now.UnixNano()); err != nil {
			return nil, err
		}
		if phc != "" {
			if _, err := tx.ExecContext(ctx, `INSERT OR REPLACE INTO acct.operator_accounts (id, password_hash, changed) VALUES (?, ?, ?)`,
				n.ID, phc, now.UnixNano()); err != nil {
				return nil, err
			}
		}
		return map[string]any{"operator": n.ID, "name": n.Name, "role": n.Role.String(), "password": phc != ""}, nil
	})
	if err != nil {
		return Operator{}, fmt.Errorf("operators: add %s: %w", n.ID, err)
	}
	op, _, err := o.Get(ctx, n.ID)
	return op, err
}

// Update changes an operator's role, disabled state or password. It
// refuses to leave the center without an active admin.
func (o *Operators) Update(ctx context.Context, id string, c OperatorChange, actor string, a Auditor) (Operator, error) {
	if c.Role != nil && (*c.Role == RoleNone || *c.Role > RoleAdmin) {
		return Operator{}, fmt.Errorf("%w: role: want viewer, analyst, approver or admin", ErrInvalidOperator)
	}
	var phc string
	if c.Password != nil && *c.Password != "" {
		var err error
		if phc, err = o.hashPassword(ctx, *c.Password); err != nil {
			return Operator{}, err
		}
	}
	now := o.now()
	err := o.inTx(ctx, a, "operator.update", actor, func(tx *sql.Tx) (any, error) {
		op, err := scanOperator(tx.QueryRowContext(ctx, `SELECT `+operatorCols+`
			FROM main.operators o LEFT JOIN acct.operator_accounts a ON a.id = o.id WHERE o.id = ?`, id))
		if errors.Is(err, sql.ErrNoRows) {
			return nil, fmt.Errorf("%w: %s", ErrNoOperator, id)
		}
		if err != nil {
			return nil, err
		}
		payload := map[string]any{"operator": id}
		if c.Role != nil {
			if _, err := tx.ExecContext(ctx, `UPDATE main.operators SET role = ? WHERE id = ?`, c.Role.String(), id); err != nil {
				return nil, err
			}
			payload["role"], payload["previous_role"] = c.Role.String(), op.Role.String()
		}
		if c.Disabled != nil {
			var v any
			if *c.Disabled {
				v = now.UnixNano()
				if op.Disabled != nil {
					v = op.Disabled.UnixNano() // keep when it was first disabled
				}
			}
			if _, err := tx.ExecContext(ctx, `UPDATE main.operators SET disabled = ? WHERE id = ?`, v, id); err != nil {
				return nil, err
			}
			payload["disabled"] = *c.Disabled
		}
		if c.Password != nil {
			if phc == "" {
				_, err = tx.ExecContext(ctx, `DELETE FROM acct.operator_accounts WHERE id = ?`, id)
				payload["password"] = "removed"
			} else {
				_, err = tx.ExecContext(ctx, `INSERT OR REPLACE INTO acct.operator_accounts (id, password_hash, changed) VALUES (?, ?, ?)`,
					id, phc, now.UnixNano())
				payload["password"] = "set"
			}
			if err != nil {
				return nil, err
			}
		}
		var admins int
		if err := tx.QueryRowContext(ctx, `SELECT count(*) FROM main.operators WHERE role = 'admin' AND disabled IS NULL`).Scan(&admins); err != nil {
			return nil, err
		}
		if admins == 0 && op.Role == RoleAdmin && op.Active() {
			return nil, ErrLastAdmin
		}
		return payload, nil
	})
	if err != nil {
		return Operator{}, fmt.Errorf("operators: update %s: %w", id, err)
	}
	op, _, err := o.Get(ctx, id)
	return op, err
}

// DrainOutbox appends the outbox's entries to a, oldest first, deleting
// each once appended. An entry whose append succeeded but whose delete did
// not is appended again next time (its payload carries its outbox id, so
// the duplicate is recognizable).
func (o *Operators) DrainOutbox(ctx context.Context, a Auditor) (int, error) {
	n := 0
	for {
		var (
			id, t             int64
			kind, actor, praw string
		)
		err := o.db.QueryRowContext(ctx, `SELECT id, time, kind, actor, payload FROM acct.audit_outbox ORDER BY id LIMIT 1`).
			Scan(&id, &t, &kind, &actor, &praw)
		if errors.Is(err, sql.ErrNoRows) {
			return n, nil
		}
		if err != nil {
			return n, fmt.Errorf("operators: outbox: %w", err)
		}
		payload := map[string]any{}
		if err := json.Unmarshal([]byte(praw), &payload); err != nil {
			payload = map[string]any{"raw": praw}
		}
		payload["outbox_id"], payload["recorded"] = id, time.Unix(0, t).UTC()
		if err := a.Audit(ctx, kind, actor, payload); err != nil {
			return n, fmt.Errorf("operators: outbox: %w", err)
		}
		o.wmu.Lock()
		_, err = o.db.ExecContext(ctx, `DELETE FROM acct.audit_outbox WHERE id = ?`, id)
		o.wmu.Unlock()
		if err != nil {
			return n, fmt.Errorf("operators: outbox: %w", err)
		}
		n++
	}
}

// CheckPassword verifies a local account's password and returns the
// operator. A disabled operator gets ErrOperatorBlocked only after a
// correct password, so the answer tells nothing to who does not know it.
// Unknown names cost one KDF run too, so timing does not tell which names
// exist.
func (o *Operators) CheckPassword(ctx context.Context, id, password string) (Operator, error) {
	var phc string
	err := o.db.QueryRowContext(ctx, `SELECT password_hash FROM acct.operator_accounts WHERE id = ?`, id).Scan(&phc)
	if err != nil && !errors.Is(err, sql.ErrNoRows) {
		return Operator{}, fmt.Errorf("operators: check password: %w", err)
	}
	known := phc != "" && len(password) <= MaxPasswordLen
	if !known {
		phc = o.dummyPHC()
	}
	ok, err := o.verifyPassword(ctx, phc, password)
	if err != nil {
		return Operator{}, err
	}
	if !ok || !known {
		return Operator{}, ErrBadCredentials
	}
	op, found, err := o.Get(ctx, id)
	if err != nil {
		return Operator{}, err
	}
	if !found {
		return Operator{}, ErrBadCredentials
	}
	if !op.Active() {
		return op, ErrOperatorBlocked
	}
	return op, nil
}

// argonParams are Argon2id's cost parameters. The defaults are RFC 9106's
// second recommended option (t=3, 64 MiB, p=4): about 0.25 s on the 2-core
// machines we measured, and at most two run at once (64 MiB each).
type argonParams struct {
	time, memKiB uint32
	threads      uint8
}

var defaultKDF = argonParams{time: 3, memKiB: 64 << 10, threads: 4}

// dummyPHC is what unknown names are verified against: the cost of a real
// check, and no password matches it (the check fails whatever the result).
func (o *Operators) dummyPHC() string {
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, o.kdf.memKiB, o.kdf.time, o.kdf.threads,
		base64.RawStdEncoding.EncodeToString(make([]byte, 16)), base64.RawStdEncoding.EncodeToString(make([]byte, 32)))
}

func (o *Operators) hashPassword(ctx context.Context, pw string) (string, error) {
	if len(pw) < MinPasswordLen || len(pw) > MaxPasswordLen {
		return "", ErrWeakPassword
	}
	salt := make([]byte, 16)
	if _, err := rand.Read(salt); err != nil {
		return "", err
	}
	if err := o.acquire(ctx); err != nil {
		return "", err
	}
	defer o.release()
	p := o.kdf
	sum := argon2.IDKey([]byte(pw), salt, p.time, p.memKiB, p.threads, 32)
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, p.memKiB, p.time, p.threads,
		base64.RawStdEncoding.EncodeToString(salt), base64.RawStdEncoding.EncodeToString(sum)), nil
}

// verifyPassword checks pw against a PHC string written by hashPassword,
// with the parameters stored in it (so raising the cost later keeps old
// hashes valid).
func (o *Operators) verifyPassword(ctx context.Context, phc, pw string) (bool, error) {
	parts := strings.Split(phc, "$")
	if len(parts) != 6 || parts[1] != "argon2id" || parts[2] != fmt.Sprintf("v=%d", argon2.Version) {
		return false, errors.New("operators: unsupported password hash format")
	}
	var p argonParams
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &p.memKiB, &p.time, &p.threads); err != nil {
		return false, fmt.Errorf("operators: password hash parameters: %w", err)
	}
	if p.memKiB > 1<<20 || p.time > 32 || p.time == 0 || p.threads == 0 {
		return false, errors.New("operators: password hash parameters out of range")
	}
	salt, err1 := base64.RawStdEncoding.DecodeString(parts[4])
	want, err2 := base64.RawStdEncoding.DecodeString(parts[5])
	if err1 != nil || err2 != nil || len(want) == 0 {
		return false, errors.New("operators: malformed password hash")
	}
	if err := o.acquire(ctx); err != nil {
		return false, err
	}
	defer o.release()
	got := argon2.IDKey([]byte(pw), salt, p.time, p.memKiB, p.threads, uint32(len(want)))
	return subtle.ConstantTimeCompare(got, want) == 1, nil
}

func (o *Operators) acquire(ctx context.Context) error {
	select {
	case o.hash <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (o *Operators) release() { <-o.hash }
