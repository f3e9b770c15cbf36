package center

// The ledger view: the current signed checkpoint, the newest entries, and
// a verification of the whole ledger on disk (the `daemoneye ledger
// verify` check, ledger.Verify), run in the background with its progress
// and result readable while it runs, the first bad entry named when it
// fails. A viewer may look and verify: auditing the audit log is what an
// auditor does, and nothing here is masked data (payloads carry ids,
// digests and justifications, never command lines).

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/evilbitlabs/daemoneye/ledger"
)

// AuditLedgerVerify records who verified the ledger and what was found.
const AuditLedgerVerify = "api.ledger_verify"

// LedgerDeps is what the ledger view needs.
type LedgerDeps struct {
	L           *ledger.Ledger
	Dir         string // the ledger's directory (ledger.Verify reads it)
	VerifierKey string // the note verifier key of the checkpoints (NAME+HASH+KEY)
}

// maxSeen bounds the checkpoints a verify request may ask to be extended.
const maxSeen = 16

type checkpointJSON struct {
	Origin  string `json:"origin"`
	Size    int64  `json:"size"`
	RootHex string `json:"root_hex"`
	RootB64 string `json:"root_b64"`
	Note    string `json:"note"`
}

func cpJSON(cp ledger.Checkpoint) checkpointJSON {
	return checkpointJSON{Origin: cp.Origin, Size: cp.Size, RootHex: hex.EncodeToString(cp.Root[:]),
		RootB64: base64.StdEncoding.EncodeToString(cp.Root[:]), Note: string(cp.Note)}
}

type ledgerEntryJSON struct {
	Index       int64           `json:"index"`
	Time        time.Time       `json:"time"`
	Kind        string          `json:"kind"`
	Actor       string          `json:"actor"`
	PayloadHash string          `json:"payload_sha256"`
	PayloadLen  int64           `json:"payload_len"`
	Payload     json.RawMessage `json:"payload"` // null once purged; a JSON string when not JSON
	Purged      bool            `json:"purged"`
	// Tampered says why the record does not match its own leaf (the
	// other fields are then empty): shown, not an error of the page.
	Tampered string `json:"tampered,omitempty"`
}

func (a *API) ledgerView(w http.ResponseWriter, r *http.Request, _ *principal) error {
	q, err := queryParams(r, "limit", "before")
	if err != nil {
		return err
	}
	l := a.ledger.L
	if l == nil {
		return errorf(http.StatusNotFound, "this API has no ledger")
	}
	limit, err := q.int("limit", 50, 1, 500)
	if err != nil {
		return err
	}
	// The checkpoint first, then entries below its size: what is listed is
	// covered by what is shown as signed.
	signed, err := l.Checkpoint()
	if err != nil {
		return fmt.Errorf("ledger checkpoint: %w", err)
	}
	v, err := note.NewVerifier(a.ledger.VerifierKey)
	if err != nil {
		return fmt.Errorf("ledger verifier key: %w", err)
	}
	cp, err := ledger.OpenCheckpoint(signed, v)
	if err != nil {
		return fmt.Errorf("ledger checkpoint: %w", err)
	}
	before, err := q.int("before", cp.Size, 0, cp.Size)
	if err != nil {
		return err
	}
	entries := []ledgerEntryJSON{}
	for i := before - 1; i >= 0 && int64(len(entries)) < limit; i-- {
		rec, err := l.Entry(i)
		if errors.Is(err, ledger.ErrTampered) {
			entries = append(entries, ledgerEntryJSON{Index: i, Payload: json.RawMessage("null"), Tampered: err.Error()})
			continue
		}
		if err != nil {
			return fmt.Errorf("ledger entry %d: %w", i, err)
		}
		e := ledgerEntryJSON{Index: rec.Index, Time: rec.Time.UTC(), Kind: rec.Kind, Actor: rec.Actor,
			PayloadHash: hex.EncodeToString(rec.PayloadHash[:]), PayloadLen: rec.PayloadLen, Purged: rec.Purged, Payload: json.RawMessage("null")}
		if rec.Payload != nil {
			if json.Valid(rec.Payload) {
				e.Payload = rec.Payload
			} else {
				b, _ := json.Marshal(string(rec.Payload))
				e.Payload = b
			}
		}
		entries = append(entries, e)
	}
	resp := map[string]any{"origin": l.Origin(), "size": l.Size(), "verifier_key": a.ledger.VerifierKey,
		"checkpoint": cpJSON(cp), "entries": entries, "verify": a.verifyJob.status()}
	if n := len(entries); n > 0 && entries[n-1].Index > 0 {
		resp["next_before"] = entries[n-1].Index
	}
	a.reply(w, http.StatusOK, resp)
	return nil
}

// verifyJob is the one ledger verification that may run at a time.
type verifyJob struct {
	mu  sync.Mutex
	cur *verifyStatus
}

// verifyStatus is what GET /api/v1/ledger/verify answers.
type verifyStatus struct {
	State    string     `json:"state"` // running, ok, failed, error
	By       string     `json:"by"`
	Started  time.Time  `json:"started"`
	Finished *time.Time `json:"finished,omitempty"`
	Done     int64      `json:"done"`
	Total    int64      `json:"total"`
	Seen     int        `json:"seen"` // checkpoints the log must extend
	// ok
	Entries     int64            `json:"entries,omitempty"`
	Root        string           `json:"root_hex,omitempty"`
	Purged      int64            `json:"purged,omitempty"`
	Checkpoints int              `json:"checkpoints,omitempty"`
	Latest      *checkpointJSON  `json:"latest,omitempty"`
	Kinds       map[string]int64 `json:"kinds,omitempty"`
	// failed: the first bad entry (-1: not an entry's fault) and why
	BadEntry  *int64 `json:"bad_entry,omitempty"`
	BadSeen   int    `json:"bad_seen,omitempty"` // 1-based index of the seen checkpoint that failed
	Reason    string `json:"reason,omitempty"`
	ElapsedMS int64  `json:"elapsed_ms"`
}

func (j *verifyJob) status() *verifyStatus {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.cur == nil {
		return nil
	}
	s := *j.cur
	return &s
}

type verifyReq struct {
	Seen []string `json:"seen"` // signed checkpoints seen before (notes)
}

func (a *API) ledgerVerify(w http.ResponseWriter, r *http.Request, p *principal) error {
	var req verifyReq
	if err := decodeOptional(r, &req); err != nil {
		return err
	}
	if a.ledger.L == nil || a.ledger.Dir == "" {
		return errorf(http.StatusNotFound, "this API has no ledger")
	}
	if len(req.Seen) > maxSeen {
		return errorf(http.StatusBadRequest, "at most %d seen checkpoints", maxSeen)
	}
	v, err := note.NewVerifier(a.ledger.VerifierKey)
	if err != nil {
		return fmt.Errorf("ledger verifier key: %w", err)
	}
	seen := make([][]byte, len(req.Seen))
	for i, s := range req.Seen {
		seen[i] = []byte(s)
	}
	j := &a.verifyJob
	j.mu.Lock()
	if j.cur != nil && j.cur.State == "running" {
		s := *j.cur
		j.mu.Unlock()
		a.reply(w, http.StatusAccepted, map[string]any{"verify": s, "already_running": true})
		return nil
	}
	st := &verifyStatus{State: "running", By: p.ID, Started: a.now().UTC(), Total: a.ledger.L.Size(), Seen: len(seen)}
	j.cur = st
	j.mu.Unlock()
	// The request is audited when the result is known (one entry: who,
	// what was checked, the outcome).
	a.bgWG.Add(1)
	go func() {
		defer a.bgWG.Done()
		a.runVerify(a.bg, p, v, seen, st)
	}()
	a.reply(w, http.StatusAccepted, map[string]any{"verify": *st})
	return nil
}

func (a *API) runVerify(ctx context.Context, p *principal, v note.Verifier, seen [][]byte, st *verifyStatus) {
	j := &a.verifyJob
	began := time.Now()
	rep, err := ledger.Verify(ctx, a.ledger.Dir, v, ledger.VerifyOptions{Seen: seen, Progress: func(done, total int64) {
		j.mu.Lock()
		st.Done, st.Total = done, total
		j.mu.Unlock()
	}})
	j.mu.Lock()
	now := a.now().UTC()
	st.Finished, st.ElapsedMS = &now, time.Since(began).Milliseconds()
	var ve *ledger.VerifyError
	switch {
	case err == nil:
		st.State, st.Done, st.Total = "ok", rep.Entries, rep.Entries
		st.Entries, st.Root, st.Purged, st.Checkpoints, st.Kinds = rep.Entries, hex.EncodeToString(rep.Root[:]), rep.Purged, rep.Checkpoints, rep.Kinds
		if rep.Latest.Size >= 0 {
			c := cpJSON(rep.Latest)
			st.Latest = &c
		}
	case errors.As(err, &ve):
		st.State, st.Reason, st.BadSeen = "failed", ve.Reason, ve.Seen
		if ve.Entry >= 0 {
			e := ve.Entry
			st.BadEntry = &e
		}
	default:
		st.State, st.Reason = "error", err.Error()
	}
	payload := map[string]any{"outcome": st.State, "entries": st.Done, "seen": st.Seen, "elapsed_ms": st.ElapsedMS}
	if st.Reason != "" {
		payload["reason"] = st.Reason
	}
	if st.BadEntry != nil {
		payload["bad_entry"] = *st.BadEntry
	}
	if st.Root != "" {
		payload["root_hex"] = st.Root
	}
	j.mu.Unlock()
	if err := a.record(ctx, AuditLedgerVerify, p, payload); err != nil {
		a.log.Error("ledger verification not recorded", "err", err)
	}
	if st.State != "ok" {
		a.log.Error("ledger verification failed", "by", p.ID, "reason", st.Reason)
	} else {
		a.log.Info("ledger verified", "by", p.ID, "entries", st.Entries)
	}
}

// decodeOptional is decode for a body that may be empty.
func decodeOptional(r *http.Request, v any) error {
	if err := decode(r, v); err != nil {
		var ae *apiError
		if errors.As(err, &ae) && ae.msg == "empty request body" {
			return nil
		}
		return err
	}
	return nil
}

func (a *API) ledgerVerifyStatus(w http.ResponseWriter, r *http.Request, _ *principal) error {
	if _, err := queryParams(r); err != nil {
		return err
	}
	a.reply(w, http.StatusOK, map[string]any{"verify": a.verifyJob.status()})
	return nil
}
