package center

// Watch rules at work. Each stored watch (api_watch.go) becomes one rule
// of a pack named "watch", run by a rules.Engine of its own over the same
// read-only store, recorder (cursors, dedup, the alerts table) and alert
// path (ledger, trace policy) as the rule packs. The engine is rebuilt when
// the watches change; the rules' cursors live in rule_cursors, so a
// rebuild continues where each rule was.

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/rules"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

// watchPack is the pack name of watch rules (alerts, rule_runs).
const watchPack = "watch"

// watchTrace is the trace a watch with trace on asks for at a match.
var watchTrace = rules.TraceSpec{Depth: DefaultTraceDepth, Duration: 30 * time.Minute,
	Collect: rules.CollectCmdlines | rules.CollectNetwork | rules.CollectFiles}

// sqlQuote is an SQL string literal. Watch values come from the store (an
// exe path, an argv array as JSON): quoted, never pasted.
func sqlQuote(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// watchRule is the rule of one watch.
func watchRule(w Watch) (rules.Rule, error) {
	cond := "e.exe = " + sqlQuote(w.Exe)
	title := "Watch #" + fmt.Sprint(w.ID) + ": exec of " + w.Exe
	if w.Match == "cmdline" {
		argv, err := sqlstore.EncodeArgv(w.Argv)
		if err != nil {
			return rules.Rule{}, err
		}
		cond += " AND e.argv = " + sqlQuote(argv)
		title = "Watch #" + fmt.Sprint(w.ID) + ": exec of the watched command line of " + w.Exe
	}
	r := rules.Rule{
		ID: w.RuleID(), Title: title, Severity: w.Severity, RunsOn: rules.Center,
		Description: fmt.Sprintf("Made by %s from %s pid %d: %s", w.CreatedBy, w.Host, w.PID, w.Reason),
		SQL: fmt.Sprintf(`SELECT e.host, e.pid, e.start, e.time, e.exe, e.cmdline, %d AS watch_id
FROM new_process_events e
WHERE e.kind = 'exec' AND e.id > %d AND %s`, w.ID, w.SinceID, cond),
	}
	if w.Trace {
		t := watchTrace
		r.Action.Trace = &t
	}
	return r, nil
}

// WatchesChanged tells the watch runner to load the rules again.
func (c *Center) WatchesChanged() {
	select {
	case c.watchChanged <- struct{}{}:
	default:
	}
}

// runWatches runs the watch rules every second (and at once after a
// change) until ctx ends.
func (c *Center) runWatches(ctx context.Context) error {
	var eng *rules.Engine
	load := func() {
		list, err := c.ops.ListWatches(ctx)
		if err != nil {
			c.log.Error("watch rules: load", "err", err)
			return
		}
		pack := &rules.Pack{Format: rules.FormatVersion, Name: watchPack, Version: "1", Source: "center:watches"}
		for _, w := range list {
			r, err := watchRule(w)
			if err != nil {
				c.log.Error("watch rule", "watch", w.ID, "err", err)
				continue
			}
			pack.Rules = append(pack.Rules, r)
		}
		if eng == nil {
			eng, err = rules.NewEngine(ctx, rules.EngineOptions{DB: c.SQL.ReadOnly(), Target: rules.Center, Recorder: c.rec,
				Log: c.log, OnAlert: c.onAlert}, pack)
		} else {
			err = eng.SetPacks(ctx, pack) // an unchanged watch keeps its cursors
		}
		if err != nil {
			c.log.Error("watch rules: engine", "err", err)
			return
		}
		c.log.Info("watch rules loaded", "rules", len(pack.Rules))
	}
	load()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		if eng != nil {
			if _, err := eng.RunOnce(ctx); err != nil && ctx.Err() == nil {
				c.log.Warn("watch rules pass", "err", err)
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-c.watchChanged:
			load()
		case <-t.C:
		}
	}
}
