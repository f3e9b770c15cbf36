package center

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"sync"
	"time"
)

// Session and login-throttling limits for local accounts.
const (
	SessionIdle        = 30 * time.Minute // a session unused this long ends
	SessionMax         = 8 * time.Hour    // and any session after this (an operator certificate's default life)
	maxSessionsPerOp   = 16               // the oldest is dropped beyond this
	MaxLoginFailures   = 5                // failed logins per account in LoginFailureWindow before it locks
	MaxAddrFailures    = 20               // failed logins per client address in LoginFailureWindow before it locks
	LoginFailureWindow = 15 * time.Minute
	LoginLockout       = 15 * time.Minute
)

// sessions are the local-account logins: random 256-bit tokens, kept in
// memory by their SHA-256 only (a memory dump shows no usable token). A
// restart of the center logs everyone out, which for an enclave's operator
// console is acceptable, and no session table can leak from disk.
type sessions struct {
	mu  sync.Mutex
	m   map[[32]byte]*session
	now func() time.Time
}

type session struct {
	operator      string
	created, used time.Time
}

func newSessions(now func() time.Time) *sessions {
	return &sessions{m: map[[32]byte]*session{}, now: now}
}

// create starts a session for operator and returns its token.
func (s *sessions) create(operator string) (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	tok := base64.RawURLEncoding.EncodeToString(b)
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	var (
		oldest    [32]byte
		oldestAt  time.Time
		n         int
		haveOlder bool
	)
	for k, v := range s.m {
		if v.operator != operator {
			continue
		}
		n++
		if !haveOlder || v.created.Before(oldestAt) {
			oldest, oldestAt, haveOlder = k, v.created, true
		}
	}
	if n >= maxSessionsPerOp {
		delete(s.m, oldest)
	}
	s.m[sha256.Sum256([]byte(tok))] = &session{operator: operator, created: now, used: now}
	return tok, nil
}

// lookup returns the operator of a live session and marks it used.
func (s *sessions) lookup(tok string) (operator string, key [32]byte, ok bool) {
	key = sha256.Sum256([]byte(tok))
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	v := s.m[key]
	if v == nil {
		return "", key, false
	}
	if now.Sub(v.used) > SessionIdle || now.Sub(v.created) > SessionMax {
		delete(s.m, key)
		return "", key, false
	}
	v.used = now
	return v.operator, key, true
}

func (s *sessions) revoke(key [32]byte) {
	s.mu.Lock()
	delete(s.m, key)
	s.mu.Unlock()
}

// revokeOperator ends every session of an operator (disabled, or role
// changed: the next request re-reads the role anyway, this is for disable).
func (s *sessions) revokeOperator(operator string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.m {
		if v.operator == operator {
			delete(s.m, k)
		}
	}
}

func (s *sessions) sweep() {
	now := s.now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for k, v := range s.m {
		if now.Sub(v.used) > SessionIdle || now.Sub(v.created) > SessionMax {
			delete(s.m, k)
		}
	}
}

// loginLimiter throttles password guessing: an account locks after
// MaxLoginFailures failures in LoginFailureWindow, and a client address
// after MaxAddrFailures (whatever names it tries). While locked, logins are
// refused without checking the password, so a correct guess during the
// lockout tells nothing. Counters are in memory: a restart resets them.
type loginLimiter struct {
	mu     sync.Mutex
	byName map[string]*failures
	byAddr map[string]*failures
	now    func() time.Time
}

type failures struct {
	n           int
	first       time.Time
	lockedUntil time.Time
}

func newLoginLimiter(now func() time.Time) *loginLimiter {
	return &loginLimiter{byName: map[string]*failures{}, byAddr: map[string]*failures{}, now: now}
}

// check returns how long the caller must wait, 0 when it may try.
func (l *loginLimiter) check(name, addr string) time.Duration {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	var wait time.Duration
	for _, f := range []*failures{l.byName[name], l.byAddr[addr]} {
		if f != nil && now.Before(f.lockedUntil) {
			wait = max(wait, f.lockedUntil.Sub(now))
		}
	}
	return wait
}

// fail counts a failed login; it reports whether this locked something.
func (l *loginLimiter) fail(name, addr string) bool {
	now := l.now()
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.byName)+len(l.byAddr) > 10000 {
		l.sweepLocked(now)
	}
	locked := false
	for _, c := range []struct {
		m     map[string]*failures
		k     string
		limit int
	}{{l.byName, name, MaxLoginFailures}, {l.byAddr, addr, MaxAddrFailures}} {
		f := c.m[c.k]
		if f == nil || now.Sub(f.first) > LoginFailureWindow {
			f = &failures{first: now}
			c.m[c.k] = f
		}
		f.n++
		if f.n >= c.limit {
			f.lockedUntil = now.Add(LoginLockout)
			f.n, f.first = 0, now
			locked = true
		}
	}
	return locked
}

// succeed clears the account's failures (not the address's: one good
// password must not launder a spray of guesses at other names).
func (l *loginLimiter) succeed(name string) {
	l.mu.Lock()
	delete(l.byName, name)
	l.mu.Unlock()
}

func (l *loginLimiter) sweep() {
	l.mu.Lock()
	l.sweepLocked(l.now())
	l.mu.Unlock()
}

func (l *loginLimiter) sweepLocked(now time.Time) {
	for _, m := range []map[string]*failures{l.byName, l.byAddr} {
		for k, f := range m {
			if now.After(f.lockedUntil) && now.Sub(f.first) > LoginFailureWindow {
				delete(m, k)
			}
		}
	}
}
