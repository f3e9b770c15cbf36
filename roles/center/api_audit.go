package center

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/evilbitlabs/daemoneye/ledger"
)

// Auditor records operator actions in the audit ledger. Audit returns once
// the entry is durable; an error means it is not recorded, and the API then
// refuses the action (or withholds the data) rather than act unrecorded.
type Auditor interface {
	Audit(ctx context.Context, kind, actor string, payload any) error
}

// LedgerAuditor appends to the center's ledger: the payload as JSON.
type LedgerAuditor struct {
	L   *ledger.Ledger
	Now func() time.Time // nil: time.Now
}

// Audit appends one entry.
func (a LedgerAuditor) Audit(ctx context.Context, kind, actor string, payload any) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	p, err := json.Marshal(payload)
	if err != nil {
		return fmt.Errorf("audit %s: %w", kind, err)
	}
	now := time.Now
	if a.Now != nil {
		now = a.Now
	}
	if _, err := a.L.Append(ledger.Entry{Kind: kind, Actor: actor, Time: now(), Payload: p}); err != nil {
		return fmt.Errorf("audit %s: %w", kind, err)
	}
	return nil
}

// Audit kinds written by the API. Actions each get one entry at the time
// they happen; reads are batched per operator into "api.view" entries.
const (
	AuditLogin          = "api.login"
	AuditLoginFailed    = "api.login_failed"
	AuditLogout         = "api.logout"
	AuditDenied         = "api.denied"
	AuditView           = "api.view"
	AuditReveal         = "api.reveal"
	AuditQuery          = "api.query"
	AuditTraceRequest   = "api.trace_request"
	AuditTraceStop      = "api.trace_stop"
	AuditTraceFailed    = "api.trace_failed"
	AuditApproval       = "api.approval"
	AuditOperatorAdd    = "operator.add"
	AuditOperatorUpdate = "operator.update"
)

// viewLog batches the reads of each operator (hosts, alerts, processes,
// traces, ...) into one "api.view" entry per operator per flush interval,
// listing every request: who looked at what is in the ledger without a
// leaf (and an fsync) per page load. A read is answered before it is
// recorded, so a crash can lose up to one interval of view records; reveal
// and query, which disclose masked or arbitrary data, are not views and are
// recorded before the answer leaves.
type viewLog struct {
	mu      sync.Mutex
	pending map[string][]viewRec
	max     int // per operator; a full buffer is flushed at once
}

type viewRec struct {
	Time   time.Time `json:"t"`
	Method string    `json:"method"`
	Path   string    `json:"path"`
	Status int       `json:"status"`
	Auth   string    `json:"auth"`
}

func newViewLog() *viewLog { return &viewLog{pending: map[string][]viewRec{}, max: 256} }

// add records a read; it returns the operator's batch when it is full.
func (v *viewLog) add(actor string, r viewRec) []viewRec {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.pending[actor] = append(v.pending[actor], r)
	if len(v.pending[actor]) < v.max {
		return nil
	}
	full := v.pending[actor]
	delete(v.pending, actor)
	return full
}

func (v *viewLog) take() map[string][]viewRec {
	v.mu.Lock()
	defer v.mu.Unlock()
	p := v.pending
	v.pending = map[string][]viewRec{}
	return p
}

func viewPayload(recs []viewRec) any {
	return map[string]any{"count": len(recs), "from": recs[0].Time, "to": recs[len(recs)-1].Time, "requests": recs}
}
