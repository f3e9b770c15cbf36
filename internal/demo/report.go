package demo

// The report: the alert, the cross-host lineage as a tree, the trace's
// summary, the package and its verification, where the API is, and the
// timings. Everything comes from the center's SQL store and the verified
// package.

import (
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

func (d *run) report(ctx context.Context) error {
	if err := d.reportAlert(ctx); err != nil {
		return err
	}
	if err := d.reportLineage(ctx); err != nil {
		return err
	}
	if err := d.reportTrace(ctx); err != nil {
		return err
	}
	d.reportPackage()
	d.reportCenter()
	d.say("\n== timings")
	for _, t := range d.res.Timings {
		d.say("  %-58s %v", t.Step, t.Took.Round(10*time.Millisecond))
	}
	d.say("  %-58s %v", "whole run", time.Since(d.began).Round(100*time.Millisecond))
	return nil
}

func (d *run) reportAlert(ctx context.Context) error {
	var (
		rule, severity, tech, context string
		t                             int64
	)
	if err := d.sql.ReadOnly().QueryRowContext(ctx, `SELECT rule_id, severity, technique, context, time FROM alerts WHERE id = ?`,
		d.res.AlertID).Scan(&rule, &severity, &tech, &context, &t); err != nil {
		return fmt.Errorf("demo: alert %d: %w", d.res.AlertID, err)
	}
	w := d.res.Web
	d.say("\n== the alert")
	d.say("  #%d %s, severity %s, ATT&CK %s, at %s", d.res.AlertID, rule, severity, tech, time.Unix(0, t).UTC().Format(time.RFC3339Nano))
	d.say("  web-1 %s (pid %d) %s", orUnknown(w.Comm), w.Key.PID, cmdline(w.Process, 100))
	var ctxMap map[string]any
	if json.Unmarshal([]byte(context), &ctxMap) == nil {
		if pc, ok := ctxMap["parent_comm"]; ok {
			by := "the center's rule engine"
			if rb, ok := ctxMap["raised_by"].(string); ok && rb == "agent" {
				by = "web-1's agent (its own rules, alert lane)"
			}
			d.say("  its parent: %v (pid %v, %v); raised by %s", pc, ctxMap["parent_pid"], ctxMap["parent_exe"], by)
		}
	}
	return nil
}

// reportLineage prints the lineage across both hosts: web-1 from the
// oldest known ancestor of the alerting bash down through ssh, then db-1
// from the process that accepted ssh's connection down to the commands,
// keeping on db-1 only the branches the trace saw.
func (d *run) reportLineage(ctx context.Context) error {
	traced, err := d.tracedProcs(ctx)
	if err != nil {
		return err
	}
	d.say("\n== the lineage across hosts (● has events under trace %s; ○ none: before the trace reached it)", d.res.TraceID)
	link := d.res.Link
	notes := map[procRef][]string{
		{WebHost, d.res.Web.Key}: {fmt.Sprintf("◀ alert #%d %s; trace root", d.res.AlertID, RuleID)},
		{WebHost, link.From}:     {fmt.Sprintf("╰─▶ connect %s -> %s: link #%d to db-1", link.Src, link.Dst, link.ID)},
		{DBHost, link.To}:        {fmt.Sprintf("◀ accepted %s from web-1 (link #%d): the trace fanned out here", link.Src, link.ID)},
	}
	print := func(host string, root sqlstore.Process, pruneUntraced bool) error {
		anc, err := d.sql.Ancestors(ctx, host, root.Key.PID, root.Key.Start)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		desc, err := d.sql.Descendants(ctx, host, root.Key.PID, root.Key.Start, 8)
		if err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		d.say("  %s", host)
		slices.Reverse(anc)
		chain := append(anc, root)
		indent := "  "
		for i, p := range chain {
			if i == 0 {
				d.printProc(indent, indent+"   ", host, p, traced, notes, 0, nil)
				continue
			}
			d.printProc(indent+"└─ ", indent+"   ", host, p, traced, notes, 0, nil)
			indent += "   "
		}
		kids := map[capture.ProcKey][]sqlstore.Process{}
		for _, p := range desc {
			kids[p.Parent] = append(kids[p.Parent], p)
		}
		for k := range kids {
			slices.SortFunc(kids[k], func(a, b sqlstore.Process) int {
				return cmp.Or(cmp.Compare(a.StartTime, b.StartTime), cmp.Compare(a.Key.PID, b.Key.PID))
			})
		}
		memo := map[capture.ProcKey]bool{}
		var keep func(k capture.ProcKey) bool
		keep = func(k capture.ProcKey) bool {
			if v, ok := memo[k]; ok {
				return v
			}
			v := traced[procRef{host, k}] || !pruneUntraced
			for _, c := range kids[k] {
				v = keep(c.Key) || v
			}
			memo[k] = v
			return v
		}
		shownKids := func(k capture.ProcKey) []sqlstore.Process {
			var out []sqlstore.Process
			for _, c := range kids[k] {
				if keep(c.Key) {
					out = append(out, c)
				}
			}
			return out
		}
		// below lists a subtree's processes, for a collapsed line.
		var below func(k capture.ProcKey) []sqlstore.Process
		below = func(k capture.ProcKey) []sqlstore.Process {
			var out []sqlstore.Process
			for _, c := range shownKids(k) {
				out = append(out, c)
				out = append(out, below(c.Key)...)
			}
			return out
		}
		var walk func(k capture.ProcKey, indent string)
		walk = func(k capture.ProcKey, indent string) {
			shown := shownKids(k)
			for i, c := range shown {
				branch, cont := "├─ ", "│  "
				if i == len(shown)-1 {
					branch, cont = "└─ ", "   "
				}
				// A branch among siblings with a big subtree (a login
				// shell's start-up files, say) is one line; a lone child
				// continues the chain.
				sub := below(c.Key)
				if len(shown) > 1 && len(sub) > collapseOver && !hasNote(notes, host, sub) {
					d.printProc(indent+branch, indent+cont, host, c, traced, notes, len(sub), sub)
					continue
				}
				d.printProc(indent+branch, indent+cont, host, c, traced, notes, 0, nil)
				walk(c.Key, indent+cont)
			}
		}
		walk(root.Key, indent)
		return nil
	}
	if err := print(WebHost, d.res.Web, false); err != nil {
		return err
	}
	if err := print(DBHost, d.res.DB, true); err != nil {
		return err
	}
	return nil
}

// procRef is a process on a host.
type procRef struct {
	host string
	key  capture.ProcKey
}

// collapseOver is the size of a side branch's subtree above which the
// lineage shows it as one line.
const collapseOver = 3

func hasNote(notes map[procRef][]string, host string, ps []sqlstore.Process) bool {
	for _, p := range ps {
		if len(notes[procRef{host, p.Key}]) > 0 {
			return true
		}
	}
	return false
}

// printProc prints one process of the lineage; with collapsed > 0 it
// stands for its subtree too.
func (d *run) printProc(first, rest, host string, p sqlstore.Process, traced map[procRef]bool, notes map[procRef][]string,
	collapsed int, sub []sqlstore.Process) {
	mark := "○"
	if traced[procRef{host, p.Key}] {
		mark = "●"
	}
	who := account(p.Exec.UID)
	if !p.Execed {
		// A fork keeps its parent's image; a later setuid (apache2's
		// worker becoming www-data) is not an event.
		who = "forked"
	}
	line := fmt.Sprintf("%s%s %s (pid %d, %s)", first, mark, orUnknown(p.Comm), p.Key.PID, who)
	width := 90
	if collapsed > 0 {
		width = 50
	}
	if c := cmdline(p.Process, width); c != "" {
		line += "  " + c
	}
	if collapsed > 0 {
		n := map[string]int{}
		for _, q := range sub {
			n[orUnknown(q.Comm)]++
		}
		var cs []string
		for c, k := range n {
			cs = append(cs, fmt.Sprintf("%s %d", c, k))
		}
		slices.Sort(cs)
		line += fmt.Sprintf("  [+%d below: %s]", collapsed, strings.Join(cs, ", "))
	}
	d.say("%s", line)
	for _, n := range notes[procRef{host, p.Key}] {
		d.say("%s    %s", rest, n)
	}
}

// tracedProcs returns the processes with events in the trace.
func (d *run) tracedProcs(ctx context.Context) (map[procRef]bool, error) {
	var parts []string
	for _, t := range sqlstore.TraceTables {
		if t != "raw_events" {
			parts = append(parts, `SELECT host, pid, start FROM `+t+` WHERE trace_id = ?1`)
		}
	}
	rows, err := d.sql.ReadOnly().QueryContext(ctx, strings.Join(parts, " UNION "), d.res.TraceID)
	if err != nil {
		return nil, fmt.Errorf("demo: traced processes: %w", err)
	}
	defer rows.Close()
	out := map[procRef]bool{}
	for rows.Next() {
		var (
			host       string
			pid, start int64
		)
		if err := rows.Scan(&host, &pid, &start); err != nil {
			return nil, err
		}
		out[procRef{host, capture.ProcKey{PID: uint32(pid), Start: uint64(start)}}] = true
	}
	return out, rows.Err()
}

func (d *run) reportTrace(ctx context.Context) error {
	id := d.res.TraceID
	evs, err := d.sql.TraceEvents(ctx, id)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	type hostSum struct {
		n              int
		kinds          map[string]int
		first, lastSeq uint64
	}
	sums := map[string]*hostSum{}
	for _, e := range evs {
		h := sums[e.Host]
		if h == nil {
			h = &hostSum{kinds: map[string]int{}, first: e.TraceSeq}
			sums[e.Host] = h
		}
		h.n++
		h.kinds[kindName(e.Kind)]++
		h.first, h.lastSeq = min(h.first, e.TraceSeq), max(h.lastSeq, e.TraceSeq)
	}
	d.res.Events = map[string]int{}
	var (
		initiated, state, reason string
		depth                    int
	)
	if err := d.sql.ReadOnly().QueryRowContext(ctx, `SELECT initiated_by, state, reason, depth FROM traces WHERE trace_id = ?`, id).
		Scan(&initiated, &state, &reason, &depth); err != nil {
		return fmt.Errorf("demo: trace %s: %w", id, err)
	}
	d.say("\n== the trace")
	d.say("  trace_id   %s (one id on both hosts), %s, initiated by %s: %s", id, state, initiated, reason)
	for _, host := range []string{WebHost, DBHost} {
		h := sums[host]
		if h == nil {
			d.say("  %-10s no events", host)
			continue
		}
		d.res.Events[host] = h.n
		var ks []string
		for k, n := range h.kinds {
			ks = append(ks, fmt.Sprintf("%s %d", k, n))
		}
		slices.Sort(ks)
		d.say("  %-10s %d events (trace_seq %d-%d): %s", host, h.n, h.first, h.lastSeq, strings.Join(ks, ", "))
	}
	l := d.res.Link
	if links, err := d.sql.Links(ctx, id); err == nil {
		for _, x := range links {
			if x.ID == l.ID {
				l = x // followed since it was first read
			}
		}
	}
	followed := "not followed"
	if !l.Followed.IsZero() {
		followed = "followed " + l.Followed.Sub(l.Time).Round(time.Millisecond).String() + " after the connect (agent clocks)"
	}
	d.say("  link #%-4d web-1 pid %d %s -> db-1 pid %d %s, %s", l.ID, l.From.PID, l.Src, l.To.PID, l.Dst, followed)
	rows, err := d.sql.ReadOnly().QueryContext(ctx, `SELECT host, pid, coalesce(link_id, 0), state FROM trace_targets WHERE trace_id = ? ORDER BY added`, id)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	defer rows.Close()
	var ts []string
	for rows.Next() {
		var (
			host, st    string
			pid, linkID int64
		)
		if err := rows.Scan(&host, &pid, &linkID, &st); err != nil {
			return err
		}
		via := "rule"
		if linkID != 0 {
			via = "link #" + strconv.FormatInt(linkID, 10)
		}
		ts = append(ts, fmt.Sprintf("%s pid %d (%s, %s)", host, pid, via, st))
	}
	d.say("  targets    %s", strings.Join(ts, "; "))
	return rows.Err()
}

func (d *run) reportPackage() {
	r := d.res.Report
	d.say("\n== the forensic package")
	d.say("  %s", d.res.Package)
	d.say("  exported by %s through GET /api/v1/traces/%s/export (the export is ledger entry #%d)", r.Export.Actor, r.TraceID, r.Export.Index)
	d.say("  VERIFIED offline with %s alone: signed by center %s; %d events proven in %d agent-signed batches, %d also in the ledger",
		d.caCert, r.Center, r.Events, r.Batches, r.EventsInLedger)
	for _, h := range r.Hosts {
		missing := ""
		if len(h.Missing) > 0 {
			missing = fmt.Sprintf(", %d ranges declared missing", len(h.Missing))
		}
		d.say("    %-8s %d events, trace_seq %d-%d, %d batches%s", h.Host, h.Events, h.FirstTraceSeq, h.LastTraceSeq, h.Batches, missing)
	}
	if c := r.Command; c != nil {
		d.say("    command  signed by %s %s, stamped by center %s (policy %s)", c.SignerRole, c.Signer, c.Center, c.Policy)
	}
	d.say("    ledger   checkpoint of %d entries; %d entries proven (alert, trace commands and answers, stop, export, events)", r.Checkpoint.Size, len(r.Actions))
	d.say("  check it again: daemoneye verify %s --ca %s", d.res.Package, d.caCert)
}

func (d *run) reportCenter() {
	op := d.res.Operator
	d.say("\n== the center")
	if d.opts.Keep {
		d.say("  API   %s/api/v1 (mutual TLS: operator certificate %s)", d.res.APIURL, op.Cert)
		d.say("        daemoneye trace show %s --api %s --cert %s --key %s --ca %s", d.res.TraceID, d.res.APIURL, op.Cert, op.Key, d.caCert)
	} else {
		d.say("  API   was %s/api/v1 while the demo ran; `daemoneye demo --keep` leaves it running to explore", d.res.APIURL)
		d.say("        (its data stays in %s)", filepath.Dir(d.res.CenterDB))
	}
	d.say("  UI    %s/ (served by the center beside the API; browsers refuse its Ed25519 TLS certificate until the", d.res.APIURL)
	d.say("        center gets an ECDSA API certificate, issue 8: the UI's browser test serves the same handler meanwhile)")
}

// cmdline is a process's command line, shortened to max runes.
func cmdline(p capture.Process, max int) string {
	c := sqlstore.Cmdline(p.Exec.Argv)
	if c == "" {
		return ""
	}
	if r := []rune(c); len(r) > max {
		c = string(r[:max-1]) + "…"
	}
	return c
}

// account names a uid.
func account(uid uint32) string {
	id := strconv.FormatUint(uint64(uid), 10)
	if u, err := user.LookupId(id); err == nil {
		return u.Username
	}
	return "uid " + id
}
