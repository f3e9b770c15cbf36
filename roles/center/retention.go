package center

// Retention: per-site windows (center.retention). A purge pass removes,
// for every host, the events of its batches older than its site's window
// from the SQL store and empties the batches' values in the batch store
// (the record SQL is rebuilt from after a crash), so that neither a restart
// nor a rebuild brings them back. The audit ledger keeps every leaf: the
// trace.event leaves still name each event and its digest, so the
// inclusion proofs of what remains verify as before, and an export of a
// trace that lost events says which (export.go).
//
// The unit is the batch: its events go together, from both stores. A batch
// is kept whole while it holds an event of a trace under legal hold
// (center.retention.hold) or of a trace not yet ended (keep_open_traces).
//
// Each chunk of batches is recorded before anything is removed: a
// "retention.purge" ledger entry names the site, cutoff, host, batches and
// what they hold; then the batch store's values go (one synced Pebble
// batch), then the SQL rows (one short transaction, the batches marked with
// that entry). The order makes an interrupted purge safe to run again: a
// batch emptied in Pebble but still in SQL is due again and goes on the
// next pass, and the SQL batches row of a purged batch keeps the
// reconciliation at start from ingesting it again. After a site's pass a
// "retention.pass" entry records its totals, and retention_runs keeps a row
// per pass for admins to query.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/store"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

// Ledger kinds retention writes.
const (
	// AuditRetentionPurge is written before a chunk of batches is removed:
	// what goes (a retentionPurge payload).
	AuditRetentionPurge = "retention.purge"
	// AuditRetentionPass is written after a site's pass: its totals.
	AuditRetentionPass = "retention.pass"

	retentionActor = "center:retention"
)

// Default chunk bounds: a chunk is one ledger entry, one synced Pebble
// batch and one SQL transaction, which holds the SQL writer (and so the
// ingest) for as long as it deletes rows.
const (
	defaultChunkBatches = 256
	defaultChunkEvents  = 5000
	procChunk           = 1000
	procPasses          = 8 // leaves first: a chain of exited processes goes one level a pass
	progressEvery       = 10 * time.Second
)

// PurgeOptions adjust one purge pass.
type PurgeOptions struct {
	// Now is the time windows count back from (zero: time.Now).
	Now time.Time
	// ChunkBatches and ChunkEvents bound a chunk (0: the defaults).
	ChunkBatches int
	ChunkEvents  int
	// Progress, if set, is called after each step of each chunk.
	Progress func(PurgeProgress)
}

// Steps of a chunk, as Progress reports them.
const (
	StepRecorded   = "recorded"    // the retention.purge entry is in the ledger
	StepBatchStore = "batch store" // the batches' values are gone from Pebble
	StepSQL        = "sql"         // their rows are gone from SQL
)

// PurgeProgress is where a pass is.
type PurgeProgress struct {
	Site, Host string
	Step       string
	Chunk      []uint64  // the chunk's batch seqs
	Entry      int64     // its retention.purge entry
	Done       SitePurge // the site's figures so far
}

// SitePurge is what a pass did for one site.
type SitePurge struct {
	Site      string           `json:"site"`
	Window    string           `json:"window"`
	Cutoff    time.Time        `json:"cutoff"`
	Hosts     int              `json:"hosts"`
	Batches   int64            `json:"batches"`
	Events    int64            `json:"events"` // rows removed from the event tables
	Tables    map[string]int64 `json:"tables,omitempty"`
	Bytes     int64            `json:"bytes"` // sealed batch bytes emptied in the batch store
	Processes int64            `json:"processes"`
	Links     int64            `json:"links"`
	Held      int64            `json:"held"` // due batches kept for an open or held trace
	Entries   []int64          `json:"entries,omitempty"`
	Run       int64            `json:"run"` // retention_runs id
}

// RetentionStatus is the purge job's figures since the center started
// (retention_runs in the SQL store has every pass).
type RetentionStatus struct {
	Running    bool
	Passes     int64
	LastStart  time.Time
	LastEnd    time.Time
	LastError  string
	Batches    int64
	Events     int64
	Bytes      int64
	Processes  int64
	Links      int64
	LastResult []SitePurge
}

// retention is the purge job's state.
type retention struct {
	run sync.Mutex // one pass at a time

	mu     sync.Mutex
	status RetentionStatus
}

// RetentionStatus returns the purge job's figures.
func (c *Center) RetentionStatus() RetentionStatus {
	c.retention.mu.Lock()
	defer c.retention.mu.Unlock()
	s := c.retention.status
	s.LastResult = slices.Clone(s.LastResult)
	return s
}

// retentionPurge is the payload of a retention.purge entry.
type retentionPurge struct {
	Site    string         `json:"site"`
	Window  string         `json:"window"`
	Cutoff  time.Time      `json:"cutoff"`
	Host    string         `json:"host"`
	Batches string         `json:"batches"` // seq ranges, "3-9,12"
	Count   int            `json:"batch_count"`
	Events  int            `json:"events"`
	Traces  map[string]int `json:"traces,omitempty"` // events of each trace among them
}

// runRetention purges every center.retention.every, the first time a
// minute after the start (or sooner if every is shorter).
func (c *Center) runRetention(ctx context.Context) error {
	r := c.cfg.Retention
	on := r.Window > 0
	for _, w := range r.Sites {
		on = on || w > 0
	}
	if !on {
		c.log.Info("retention off: center.retention.window and every site window are 0 (events are kept forever)")
		return nil
	}
	every := time.Duration(r.Every)
	if every <= 0 {
		every = time.Hour
	}
	t := time.NewTimer(min(every, time.Minute))
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if _, err := c.Purge(ctx, PurgeOptions{}); err != nil && ctx.Err() == nil {
			c.log.Error("retention purge", "err", err)
		}
		t.Reset(every)
	}
}

// Purge runs one retention pass over every site and returns what it did.
// It stops at the first error (or when ctx ends) and may be run again: a
// pass interrupted anywhere and run again ends in the same state.
func (c *Center) Purge(ctx context.Context, opt PurgeOptions) ([]SitePurge, error) {
	c.retention.run.Lock()
	defer c.retention.run.Unlock()
	if opt.Now.IsZero() {
		opt.Now = time.Now()
	}
	if opt.ChunkBatches <= 0 {
		opt.ChunkBatches = defaultChunkBatches
	}
	if opt.ChunkEvents <= 0 {
		opt.ChunkEvents = defaultChunkEvents
	}
	start := time.Now()
	c.retention.mu.Lock()
	c.retention.status.Running, c.retention.status.LastStart = true, start
	c.retention.mu.Unlock()

	res, err := c.purge(ctx, opt)

	c.retention.mu.Lock()
	st := &c.retention.status
	st.Running, st.LastEnd, st.LastResult = false, time.Now(), res
	st.Passes++
	st.LastError = ""
	if err != nil {
		st.LastError = err.Error()
	}
	for _, sp := range res {
		st.Batches += sp.Batches
		st.Events += sp.Events
		st.Bytes += sp.Bytes
		st.Processes += sp.Processes
		st.Links += sp.Links
	}
	c.retention.mu.Unlock()
	return res, err
}

func (c *Center) purge(ctx context.Context, opt PurgeOptions) ([]SitePurge, error) {
	cfg := c.cfg.Retention
	sites, err := c.SQL.HostsBySite(ctx)
	if err != nil {
		return nil, fmt.Errorf("retention: %w", err)
	}
	keep := slices.Clone(cfg.Hold)
	if cfg.KeepOpenTraces {
		open, err := c.SQL.OpenTraces(ctx)
		if err != nil {
			return nil, fmt.Errorf("retention: %w", err)
		}
		keep = append(keep, open...)
	}
	slices.Sort(keep)
	keep = slices.Compact(keep)
	held := map[sqlstore.BatchRef]bool{}
	for _, id := range keep {
		refs, err := c.SQL.TraceBatches(ctx, id)
		if err != nil {
			return nil, fmt.Errorf("retention: %w", err)
		}
		for _, r := range refs {
			held[r] = true
		}
	}
	names := make([]string, 0, len(sites))
	for s := range sites {
		names = append(names, s)
	}
	slices.Sort(names)
	var out []SitePurge
	for _, site := range names {
		window := cfg.WindowOf(site)
		if window <= 0 {
			continue // kept forever
		}
		sp, err := c.purgeSite(ctx, opt, site, window, sites[site], keep, held)
		out = append(out, sp)
		if err != nil {
			return out, err
		}
	}
	return out, nil
}

// purgeSite runs a pass over the hosts of one site.
func (c *Center) purgeSite(ctx context.Context, opt PurgeOptions, site string, window time.Duration, hosts, keep []string,
	held map[sqlstore.BatchRef]bool) (SitePurge, error) {
	cutoff := opt.Now.Add(-window)
	sp := SitePurge{Site: site, Window: config.Period(window).String(), Cutoff: cutoff.UTC(), Hosts: len(hosts), Tables: map[string]int64{}}
	log := c.log.With("component", "retention", "site", site, "window", sp.Window, "cutoff", sp.Cutoff.Format(time.RFC3339))
	started := time.Now()
	run, err := c.SQL.BeginRetentionRun(ctx, site, window, cutoff, started)
	if err != nil {
		return sp, fmt.Errorf("retention: site %q: %w", site, err)
	}
	sp.Run = run
	p := &sitePass{c: c, opt: opt, sp: &sp, log: log, cutoff: cutoff, held: held, last: started}
	for _, host := range hosts {
		if err = p.host(ctx, host, keep); err != nil {
			err = fmt.Errorf("retention: site %q host %s: %w", site, host, err)
			break
		}
	}
	rr := sqlstore.RetentionRun{ID: run, Batches: sp.Batches, Events: sp.Events, Bytes: sp.Bytes, Processes: sp.Processes,
		Links: sp.Links, Held: sp.Held}
	if err != nil {
		rr.Error = err.Error()
		log.Warn("retention pass stopped", "err", err, "batches", sp.Batches, "events", sp.Events)
	} else {
		rr.Finished = time.Now()
	}
	if uerr := c.SQL.UpdateRetentionRun(ctx, rr); uerr != nil {
		err = errors.Join(err, fmt.Errorf("retention: %w", uerr))
	}
	if err != nil {
		return sp, err
	}
	if sp.Batches+sp.Processes+sp.Links > 0 {
		payload, merr := json.Marshal(sp)
		if merr != nil {
			return sp, merr
		}
		if _, err := c.Ledger.Append(ledger.Entry{Kind: AuditRetentionPass, Actor: retentionActor, Time: time.Now(), Payload: payload}); err != nil {
			return sp, fmt.Errorf("retention: site %q: record the pass: %w", site, err)
		}
	}
	level := slog.LevelInfo
	if sp.Batches+sp.Processes+sp.Links == 0 {
		level = slog.LevelDebug // nothing was due
	}
	log.Log(ctx, level, "retention pass", "hosts", sp.Hosts, "batches", sp.Batches, "events", sp.Events, "bytes", sp.Bytes,
		"processes", sp.Processes, "links", sp.Links, "held", sp.Held, "took", time.Since(started).Round(time.Millisecond))
	return sp, nil
}

// sitePass is one site's pass in progress.
type sitePass struct {
	c      *Center
	opt    PurgeOptions
	sp     *SitePurge
	log    *slog.Logger
	cutoff time.Time
	held   map[sqlstore.BatchRef]bool
	last   time.Time // last progress line
}

// host purges one host: its due batches chunk by chunk, then the
// processes and links they leave without events.
func (p *sitePass) host(ctx context.Context, host string, keep []string) error {
	var after sqlstore.DueBatch
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		due, err := p.c.SQL.DueBatches(ctx, host, p.cutoff.UnixNano(), after, p.opt.ChunkBatches)
		if err != nil {
			return err
		}
		if len(due) == 0 {
			break
		}
		after = due[len(due)-1]
		var todo []sqlstore.DueBatch
		for _, b := range due {
			if p.held[sqlstore.BatchRef{Host: host, Seq: b.Seq}] {
				p.sp.Held++
				continue
			}
			todo = append(todo, b)
		}
		for len(todo) > 0 {
			n, events := 0, 0
			for n < len(todo) && (n == 0 || events+todo[n].Events <= p.opt.ChunkEvents) {
				events += todo[n].Events
				n++
			}
			if err := p.chunk(ctx, host, todo[:n]); err != nil {
				return err
			}
			todo = todo[n:]
		}
		if len(due) < p.opt.ChunkBatches {
			break
		}
	}
	// Derived rows: leaves first, a few passes; what a deep chain leaves
	// goes on the next run.
	for range procPasses {
		var (
			cur     sqlstore.ProcCursor
			removed int64
		)
		for {
			n, next, done, err := p.c.SQL.PurgeProcesses(ctx, host, p.cutoff.UnixNano(), cur, procChunk)
			if err != nil {
				return err
			}
			removed += n
			if done {
				break
			}
			cur = next
		}
		p.sp.Processes += removed
		if removed == 0 {
			break
		}
	}
	for {
		n, err := p.c.SQL.PurgeLinks(ctx, host, keep, procChunk)
		if err != nil {
			return err
		}
		p.sp.Links += n
		if n < procChunk {
			break
		}
	}
	return nil
}

// chunk removes one chunk of batches: recorded, then the batch store, then
// SQL.
func (p *sitePass) chunk(ctx context.Context, host string, batches []sqlstore.DueBatch) error {
	seqs := make([]uint64, len(batches))
	events := 0
	for i, b := range batches {
		seqs[i] = b.Seq
		events += b.Events
	}
	traces, err := p.c.SQL.BatchTraces(ctx, host, seqs)
	if err != nil {
		return err
	}
	payload, err := json.Marshal(retentionPurge{Site: p.sp.Site, Window: p.sp.Window, Cutoff: p.sp.Cutoff, Host: host,
		Batches: seqRanges(seqs), Count: len(seqs), Events: events, Traces: traces})
	if err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	entry, err := p.c.Ledger.Append(ledger.Entry{Kind: AuditRetentionPurge, Actor: retentionActor, Time: time.Now(), Payload: payload})
	if err != nil {
		return fmt.Errorf("record the purge: %w", err)
	}
	p.sp.Entries = append(p.sp.Entries, entry)
	p.progress(host, StepRecorded, seqs, entry)
	if err := ctx.Err(); err != nil {
		return err
	}

	keys := make([][]byte, len(seqs))
	for i, s := range seqs {
		keys[i] = batchKey(host, s)
	}
	_, freed, err := store.PurgeValues(p.c.db, keys)
	if err != nil {
		return fmt.Errorf("batch store: %w", err)
	}
	p.sp.Bytes += freed
	p.progress(host, StepBatchStore, seqs, entry)
	if err := ctx.Err(); err != nil {
		return err
	}

	counts, err := p.c.SQL.PurgeBatches(ctx, host, seqs, entry)
	if err != nil {
		return err
	}
	p.sp.Batches += int64(counts.Batches)
	p.sp.Events += counts.Events
	for t, n := range counts.Tables {
		if n > 0 {
			p.sp.Tables[t] += n
		}
	}
	p.progress(host, StepSQL, seqs, entry)
	return nil
}

func (p *sitePass) progress(host, step string, seqs []uint64, entry int64) {
	if step == StepSQL && time.Since(p.last) >= progressEvery {
		p.last = time.Now()
		p.log.Info("retention progress", "host", host, "batches", p.sp.Batches, "events", p.sp.Events, "bytes", p.sp.Bytes)
	}
	if p.opt.Progress != nil {
		p.opt.Progress(PurgeProgress{Site: p.sp.Site, Host: host, Step: step, Chunk: seqs, Entry: entry, Done: *p.sp})
	}
}

// seqRanges writes sorted seqs as "1-3,7".
func seqRanges(seqs []uint64) string {
	s := slices.Clone(seqs)
	slices.Sort(s)
	var b strings.Builder
	for i := 0; i < len(s); {
		j := i
		for j+1 < len(s) && s[j+1] == s[j]+1 {
			j++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		b.WriteString(strconv.FormatUint(s[i], 10))
		if j > i {
			b.WriteByte('-')
			b.WriteString(strconv.FormatUint(s[j], 10))
		}
		i = j + 1
	}
	return b.String()
}
