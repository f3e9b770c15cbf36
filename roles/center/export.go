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
	"maps"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/store"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
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
	// Retention is set when retention removed some of the trace's events.
	Retention *exportRetentionInfo `json:"retention,omitempty"`
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
	TraceSeq    uint64 `json:"trace_seq"`
}

// ExportTrace writes the signed forensic package of a trace to w: its
// metadata and signed command, every stored batch holding one of its
// events, and the ledger entries about it (the operator actions, the
// trace.event leaf of each event, the alert that prompted it, the export
// itself) with inclusion proofs in a fresh checkpoint. Events retention
// removed are left out and trace.json says which (with the retention.purge
// entries among the proven ones). The package is checked against the CA
// before a byte is written.
func (c *Center) ExportTrace(ctx context.Context, traceID string, w io.Writer) error {
	meta, command, alertID, err := c.exportMeta(ctx, traceID)
	if err != nil {
		return err
	}
	indexes, refs, leaves, exported, err := c.traceEntries(ctx, traceID, alertID)
	if err != nil {
		return err
	}
	if !exported {
		return fmt.Errorf("export %s: %w", traceID, ErrExportNotRecorded)
	}
	stored, err := c.SQL.TraceBatches(ctx, traceID)
	if err != nil {
		return fmt.Errorf("export %s: %w", traceID, err)
	}
	for _, r := range stored {
		if r := (sqlstore.BatchRef{Host: r.Host, Seq: r.Seq}); !slices.Contains(refs, r) {
			refs = append(refs, r)
		}
	}
	slices.SortFunc(refs, func(a, b sqlstore.BatchRef) int {
		return cmp.Or(strings.Compare(a.Host, b.Host), cmp.Compare(a.Seq, b.Seq))
	})
	purged, err := c.SQL.PurgedBatches(ctx, refs) // which retention removed, with the ledger entry of each
	if err != nil {
		return fmt.Errorf("export %s: %w", traceID, err)
	}
	batches := make([][]byte, 0, len(refs))
	for _, r := range refs {
		if _, ok := purged[r]; ok {
			continue
		}
		sealed, ok, err := c.Ingest.Batch(r.Host, r.Seq)
		if err != nil {
			return fmt.Errorf("export %s: batch %s/%d: %w", traceID, r.Host, r.Seq, err)
		}
		if !ok {
			return fmt.Errorf("export %s: batch %s/%d is recorded in the ledger but not in the batch store", traceID, r.Host, r.Seq)
		}
		if store.Purged(sealed) {
			purged[r] = -1 // a purge emptied it and has not reached SQL yet (its next pass finishes it)
			continue
		}
		batches = append(batches, sealed)
	}
	if len(purged) > 0 {
		// Events retention removed: their batches cannot be proven, so
		// their trace.event leaves stay out (the package would claim
		// events it lacks); trace.json says what went, and the
		// retention.purge entries that recorded it are proven instead.
		var kept []int64
		for _, i := range indexes {
			l, isEvent := leaves[i]
			if _, gone := purged[l.ref]; !isEvent || !gone {
				kept = append(kept, i)
			}
		}
		if meta.Retention, err = c.exportRetention(purged, leaves); err != nil {
			return fmt.Errorf("export %s: %w", traceID, err)
		}
		for _, p := range meta.Retention.Purges {
			kept = append(kept, p.Entry)
		}
		slices.Sort(kept)
		indexes = slices.Compact(kept)
	}
	metaJSON, err := json.Marshal(meta)
	if err != nil {
		return fmt.Errorf("export %s: %w", traceID, err)
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
		TraceID: traceID, Metadata: metaJSON, Command: command, Batches: batches,
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
		"ledger_entries", len(rep.Actions), "checkpoint", rep.Checkpoint.Size, "purged_batches", len(purged), "bytes", len(pkg))
	_, err = w.Write(pkg)
	return err
}

// exportMeta reads the trace's row, targets and signed command.
func (c *Center) exportMeta(ctx context.Context, traceID string) (*exportMeta, []byte, int64, error) {
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
	var alertID int64
	if t.AlertID != nil {
		alertID = *t.AlertID
	}
	if len(command) == 0 {
		command = nil
	}
	return &m, command, alertID, nil
}

// traceEntries scans the ledger for the entries about a trace: those whose
// payload names it (trace_id, or an approval's subject), and the alert that
// prompted it. The trace.event entries among them name the batches that
// hold its events (leaves: by entry). It reads every entry: the ledger has
// no index by trace.
func (c *Center) traceEntries(ctx context.Context, traceID string, alertID int64) ([]int64, []sqlstore.BatchRef, map[int64]eventLeaf, bool, error) {
	var (
		indexes  []int64
		refs     []sqlstore.BatchRef
		leaves   = map[int64]eventLeaf{}
		exported bool
	)
	n := c.Ledger.Size()
	for i := int64(0); i < n; i++ {
		if i&0x3ff == 0 {
			if err := ctx.Err(); err != nil {
				return nil, nil, nil, false, err
			}
		}
		rec, err := c.Ledger.Entry(i)
		if err != nil {
			return nil, nil, nil, false, fmt.Errorf("export %s: %w", traceID, err)
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
			if ref := (sqlstore.BatchRef{Host: r.Host, Seq: r.BatchSeq}); r.Host != "" {
				leaves[i] = eventLeaf{ref: ref, traceSeq: r.TraceSeq}
				if !slices.Contains(refs, ref) {
					refs = append(refs, ref)
				}
			}
		case ledger.KindExport:
			exported = exported || r.TraceID == traceID
		}
	}
	return indexes, refs, leaves, exported, nil
}

// eventLeaf is what a trace.event entry says of its event.
type eventLeaf struct {
	ref      sqlstore.BatchRef
	traceSeq uint64
}

// exportRetentionInfo is trace.json's account of the trace's events that
// retention removed.
type exportRetentionInfo struct {
	Note   string               `json:"note"`
	Purged []exportPurgedEvents `json:"purged"`
	Purges []exportPurgeEntry   `json:"purges"`
}

// exportPurgedEvents are one host's removed events of the trace.
type exportPurgedEvents struct {
	Host     string `json:"host"`
	Events   int    `json:"events"`    // as the ledger's trace.event leaves count them
	TraceSeq string `json:"trace_seq"` // their trace_seq numbers, "1-4,9"
	Batches  string `json:"batches"`   // the batches they were in
	Pending  bool   `json:"pending,omitempty"`
}

// exportPurgeEntry is a retention.purge ledger entry (proven in the
// package) that removed some of them.
type exportPurgeEntry struct {
	Entry  int64     `json:"entry"`
	Time   time.Time `json:"time"`
	Site   string    `json:"site"`
	Window string    `json:"window"`
	Cutoff time.Time `json:"cutoff"`
}

// exportRetention describes the removed events from the trace's leaves and
// the retention.purge entries.
func (c *Center) exportRetention(purged map[sqlstore.BatchRef]int64, leaves map[int64]eventLeaf) (*exportRetentionInfo, error) {
	info := &exportRetentionInfo{Note: "events of this trace that retention removed after their site's window: their batches are not " +
		"in the package, so their trace_seq numbers show as missing; the ledger keeps their trace.event leaves (hashes), and the " +
		"retention.purge entries that recorded the removal are proven here"}
	type hostSet struct {
		seqs    []uint64
		batches []uint64
		pending bool
	}
	hosts := map[string]*hostSet{}
	for _, l := range leaves {
		if _, gone := purged[l.ref]; !gone {
			continue
		}
		h := hosts[l.ref.Host]
		if h == nil {
			h = &hostSet{}
			hosts[l.ref.Host] = h
		}
		h.seqs = append(h.seqs, l.traceSeq)
	}
	marks := map[int64]bool{}
	for r, mark := range purged {
		h := hosts[r.Host]
		if h == nil {
			h = &hostSet{}
			hosts[r.Host] = h
		}
		h.batches = append(h.batches, r.Seq)
		if mark < 0 {
			h.pending = true
		} else {
			marks[mark] = true
		}
	}
	for _, host := range slices.Sorted(maps.Keys(hosts)) {
		h := hosts[host]
		info.Purged = append(info.Purged, exportPurgedEvents{Host: host, Events: len(h.seqs), TraceSeq: seqRanges(h.seqs),
			Batches: seqRanges(h.batches), Pending: h.pending})
	}
	for _, i := range slices.Sorted(maps.Keys(marks)) {
		rec, err := c.Ledger.Entry(i)
		if err != nil {
			return nil, err
		}
		var p retentionPurge
		if rec.Kind != AuditRetentionPurge || rec.Purged || json.Unmarshal(rec.Payload, &p) != nil {
			return nil, fmt.Errorf("ledger entry %d is not a %s entry, yet a batch is marked purged by it", i, AuditRetentionPurge)
		}
		info.Purges = append(info.Purges, exportPurgeEntry{Entry: i, Time: rec.Time.UTC(), Site: p.Site, Window: p.Window, Cutoff: p.Cutoff})
	}
	return info, nil
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
