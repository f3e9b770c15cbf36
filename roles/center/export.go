package center

// Forensic export: one signed file with everything a trace recorded and
// the chain of custody around it (ledger/package.go describes the format
// and what `daemoneye verify` proves from it with only the CA certificate).
//
// An export is an operator action: the API records it in the ledger
// (kind "export") before it builds the package, and the package proves that
// record with the rest, so every copy of a package shows who exported it.
// ExportTrace refuses to build a package for a trace without one.

import (
	"bytes"
	"cmp"
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/ledger"
)

// Export errors callers branch on.
var (
	// ErrNoTrace: the center has no trace of that id.
	ErrNoTrace = errors.New("no such trace")
	// ErrExportNotRecorded: no export of the trace is in the ledger yet.
	ErrExportNotRecorded = errors.New("export not recorded in the ledger")
)

// TraceExporter builds forensic packages (the Center; the API finds it
// behind CenterOps).
type TraceExporter interface {
	ExportTrace(ctx context.Context, traceID string, w io.Writer) error
}

// exportMeta is the package's trace.json: the trace as GET
// /api/v1/traces/{id} shows it, with its targets.
type exportMeta struct {
	traceJSON
	Targets []exportTarget `json:"targets"`
}

type exportTarget struct {
	Host   string    `json:"host"`
	PID    uint32    `json:"pid"`
	Start  uint64    `json:"start"`
	LinkID *int64    `json:"link_id"`
	State  string    `json:"state"`
	Added  time.Time `json:"added"`
}

// ledgerRef is what an export reads from a ledger entry's JSON payload.
type ledgerRef struct {
	TraceID     string `json:"trace_id"`
	SubjectKind string `json:"subject_kind"`
	SubjectID   string `json:"subject_id"`
	AlertID     *int64 `json:"alert_id"`
	Host        string `json:"host"`
	BatchSeq    uint64 `json:"batch_seq"`
}

type batchRef struct {
	host string
	seq  uint64
}

// ExportTrace writes the signed forensic package of a trace to w: its
// metadata and signed command, every stored batch holding one of its
// events, and the ledger entries about it (the operator actions, the
// trace.event leaf of each event, the alert that prompted it, the export
// itself) with inclusion proofs in a fresh checkpoint. The package is
// checked against the CA before a byte is written.
func (c *Center) ExportTrace(ctx context.Context, traceID string, w io.Writer) error {
	meta, command, alertID, err := c.exportMeta(ctx, traceID)
	if err != nil {
		return err
	}
	indexes, refs, exported, err := c.traceEntries(ctx, traceID, alertID)
	if err != nil {
		return err
	}
	if !exported {
		return fmt.Errorf("export %s: %w", traceID, ErrExportNotRecorded)
	}
	stored, err := c.traceBatchRefs(ctx, traceID)
	if err != nil {
		return fmt.Errorf("export %s: %w", traceID, err)
	}
	for _, r := range stored {
		if !slices.Contains(refs, r) {
			refs = append(refs, r)
		}
	}
	slices.SortFunc(refs, func(a, b batchRef) int {
		if a.host != b.host {
			return strings.Compare(a.host, b.host)
		}
		return cmp.Compare(a.seq, b.seq)
	})
	batches := make([][]byte, 0, len(refs))
	for _, r := range refs {
		sealed, ok, err := c.Ingest.Batch(r.host, r.seq)
		if err != nil {
			return fmt.Errorf("export %s: batch %s/%d: %w", traceID, r.host, r.seq, err)
		}
		if !ok {
			return fmt.Errorf("export %s: batch %s/%d is recorded in the ledger but not in the batch store", traceID, r.host, r.seq)
		}
		batches = append(batches, sealed)
	}
	checkpoint, entries, err := ledger.ProveEntries(c.Ledger, indexes)
	if err != nil {
		return fmt.Errorf("export %s: %w", traceID, err)
	}
	_, vkey, err := ledger.LoadOrCreateSigner(filepath.Join(c.cfg.DataDir, "ledger.key"), ledger.Origin(c.id.Name))
	if err != nil {
		return fmt.Errorf("export %s: %w", traceID, err)
	}
	pkg, err := ledger.BuildPackage(ledger.PackageInput{
		TraceID: traceID, Metadata: meta, Command: command, Batches: batches,
		Checkpoint: checkpoint, VerifierKey: vkey, Entries: entries, ExportedAt: time.Now(),
	}, ledger.PackageSigner{Key: c.id.Key(), Chain: [][]byte{c.id.CertDER()}})
	if err != nil {
		return fmt.Errorf("export %s: %w", traceID, err)
	}
	rep, err := ledger.VerifyPackage(pkg, c.id.Verifier.CA())
	if err != nil {
		c.log.Error("export: the package does not verify; not handed out", "trace", traceID, "err", err)
		return fmt.Errorf("export %s: the package built does not verify: %w", traceID, err)
	}
	c.log.Info("trace exported", "trace", traceID, "events", rep.Events, "batches", rep.Batches, "hosts", len(rep.Hosts),
		"ledger_entries", len(rep.Actions), "checkpoint", rep.Checkpoint.Size, "bytes", len(pkg))
	_, err = w.Write(pkg)
	return err
}

// exportMeta reads the trace's row, targets and signed command.
func (c *Center) exportMeta(ctx context.Context, traceID string) ([]byte, []byte, int64, error) {
	ro := c.SQL.ReadOnly()
	t, err := scanTrace(ro.QueryRowContext(ctx, `SELECT `+traceCols+` FROM traces WHERE trace_id = ?`, traceID))
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil, 0, fmt.Errorf("export %s: %w", traceID, ErrNoTrace)
	}
	if err != nil {
		return nil, nil, 0, fmt.Errorf("export %s: %w", traceID, err)
	}
	var command []byte
	if err := ro.QueryRowContext(ctx, `SELECT command FROM traces WHERE trace_id = ?`, traceID).Scan(&command); err != nil {
		return nil, nil, 0, fmt.Errorf("export %s: %w", traceID, err)
	}
	m := exportMeta{traceJSON: t, Targets: []exportTarget{}}
	rows, err := ro.QueryContext(ctx, `SELECT host, pid, start, link_id, state, added FROM trace_targets WHERE trace_id = ? ORDER BY added, host`, traceID)
	if err != nil {
		return nil, nil, 0, fmt.Errorf("export %s: %w", traceID, err)
	}
	defer rows.Close()
	for rows.Next() {
		var (
			tg         exportTarget
			pid, start int64
			link       sql.NullInt64
			added      int64
		)
		if err := rows.Scan(&tg.Host, &pid, &start, &link, &tg.State, &added); err != nil {
			return nil, nil, 0, fmt.Errorf("export %s: %w", traceID, err)
		}
		tg.PID, tg.Start, tg.Added = uint32(pid), uint64(start), time.Unix(0, added).UTC()
		if link.Valid {
			tg.LinkID = &link.Int64
		}
		m.Targets = append(m.Targets, tg)
	}
	if err := rows.Err(); err != nil {
		return nil, nil, 0, fmt.Errorf("export %s: %w", traceID, err)
	}
	b, err := json.Marshal(m)
	if err != nil {
		return nil, nil, 0, err
	}
	var alertID int64
	if t.AlertID != nil {
		alertID = *t.AlertID
	}
	if len(command) == 0 {
		command = nil
	}
	return b, command, alertID, nil
}

// traceBatchRefs lists the batches the SQL store holds events of the trace
// from. The ledger's trace.event leaves name the same batches; this also
// finds a batch whose leaves the ledger failed to append (the center logs
// that and goes on), so that its events are exported, not declared missing.
// TODO: sqlstore.(*Store).TraceBatches, once it lands, replaces this query.
func (c *Center) traceBatchRefs(ctx context.Context, traceID string) ([]batchRef, error) {
	rows, err := c.SQL.ReadOnly().QueryContext(ctx, `
		SELECT host, batch_seq FROM process_events WHERE trace_id = ?1
		UNION SELECT host, batch_seq FROM network_events WHERE trace_id = ?1
		UNION SELECT host, batch_seq FROM file_events WHERE trace_id = ?1
		UNION SELECT host, batch_seq FROM exe_hashes WHERE trace_id = ?1
		UNION SELECT host, batch_seq FROM mem_snippets WHERE trace_id = ?1`, traceID)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []batchRef
	for rows.Next() {
		var r batchRef
		var seq int64
		if err := rows.Scan(&r.host, &seq); err != nil {
			return nil, err
		}
		r.seq = uint64(seq)
		out = append(out, r)
	}
	return out, rows.Err()
}

// traceEntries scans the ledger for the entries about a trace: those whose
// payload names it (trace_id, or an approval's subject), and the alert that
// prompted it. The trace.event entries among them name the batches that
// hold its events. It reads every entry: the ledger has no index by trace.
func (c *Center) traceEntries(ctx context.Context, traceID string, alertID int64) ([]int64, []batchRef, bool, error) {
	var (
		indexes  []int64
		refs     []batchRef
		exported bool
	)
	n := c.Ledger.Size()
	for i := int64(0); i < n; i++ {
		if i&0x3ff == 0 {
			if err := ctx.Err(); err != nil {
				return nil, nil, false, err
			}
		}
		rec, err := c.Ledger.Entry(i)
		if err != nil {
			return nil, nil, false, fmt.Errorf("export %s: %w", traceID, err)
		}
		if rec.Purged || len(rec.Payload) == 0 || rec.Payload[0] != '{' {
			continue
		}
		var r ledgerRef
		if json.Unmarshal(rec.Payload, &r) != nil {
			continue
		}
		switch {
		case r.TraceID == traceID:
		case r.SubjectID == traceID && (r.SubjectKind == "trace" || r.SubjectKind == "follow" || r.SubjectKind == "export"):
		case rec.Kind == "alert" && alertID != 0 && r.AlertID != nil && *r.AlertID == alertID:
		default:
			continue
		}
		indexes = append(indexes, i)
		switch rec.Kind {
		case ledger.KindTraceEvent:
			if ref := (batchRef{r.Host, r.BatchSeq}); r.Host != "" && !slices.Contains(refs, ref) {
				refs = append(refs, ref)
			}
		case ledger.KindExport:
			exported = exported || r.TraceID == traceID
		}
	}
	return indexes, refs, exported, nil
}

// exportTrace is GET /api/v1/traces/{id}/export?reason=WHY: it records the
// export in the ledger, then answers with the package (built in memory, so
// that a failure is an error status, not a truncated file).
//
// An export is a reveal: the package carries the trace's events as the
// agents signed them, command lines and environments included (masking
// them would break the agents' signatures, which are the evidence). So it
// takes a reason, like POST /reveal, recorded with the export.
func (a *API) exportTrace(w http.ResponseWriter, r *http.Request, p *principal) error {
	id := r.PathValue("id")
	q, err := queryParams(r, "reason")
	if err != nil {
		return err
	}
	reason, err := checkReason("exporting a trace (its package holds command lines and environments as recorded)", q.str("reason"))
	if err != nil {
		return err
	}
	var n int
	if err := a.sql.ReadOnly().QueryRowContext(r.Context(), `SELECT count(*) FROM traces WHERE trace_id = ?`, id).Scan(&n); err != nil {
		return err
	}
	if n == 0 {
		return errorf(http.StatusNotFound, "no trace %q", id)
	}
	ex, ok := a.center.(TraceExporter)
	if !ok {
		return errorf(http.StatusNotImplemented, "this center cannot export packages")
	}
	if err := a.record(r.Context(), ledger.KindExport, p, map[string]any{"trace_id": id, "format": ledger.PackageFormat, "reason": reason,
		"unmasked": "command lines and environments of the trace's events, as the agents signed them"}); err != nil {
		return err
	}
	var buf bytes.Buffer
	if err := ex.ExportTrace(r.Context(), id, &buf); err != nil {
		if errors.Is(err, ErrNoTrace) {
			return errorf(http.StatusNotFound, "no trace %q", id)
		}
		return err
	}
	h := w.Header()
	h.Set("Content-Type", ledger.PackageMediaType)
	h.Set("Content-Disposition", `attachment; filename="`+id+`.dpkg"`)
	h.Set("Content-Length", strconv.Itoa(buf.Len()))
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(buf.Bytes()); err != nil {
		a.log.Warn("export: client went away", "trace", id, "operator", p.ID, "err", err)
	}
	return nil
}
