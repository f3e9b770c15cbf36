package demo

// The run itself: set-up, the attack, and a bounded wait for each link of
// the chain, read from the center's SQL store.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/internal/atomicfile"
	"github.com/evilbitlabs/daemoneye/internal/scenario"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

func (d *run) say(format string, args ...any) {
	fmt.Fprintf(d.out, format+"\n", args...)
}

// timing records how long a step took.
func (d *run) timing(step string, took time.Duration) {
	d.res.Timings = append(d.res.Timings, Timing{step, took})
}

func (d *run) main(ctx context.Context) error {
	d.say("DaemonEye demo: issue 7's chain on one machine (directory %s)", d.dir)
	d.say("\n== set-up")
	t0 := time.Now()
	if m := scenario.Missing(); len(m) > 0 {
		d.say("  installing  %s with apt-get (their services stay stopped; the demo runs its own)", strings.Join(m, " "))
		if err := scenario.Install(ctx, d.log); err != nil {
			return fmt.Errorf("demo: %w", err)
		}
		d.timing("install", time.Since(t0))
	}
	if removed, err := scenario.Sweep(); err != nil {
		d.say("  leftovers   could not remove all of a killed run's hosts: %v", err)
	} else if len(removed) > 0 {
		d.say("  leftovers   removed %d namespaces and directories of a killed run", len(removed))
	}
	t1 := time.Now()
	if err := d.prepare(); err != nil {
		return err
	}
	if err := d.startCenter(); err != nil {
		return err
	}
	proxyAddr, err := d.startProxy()
	if err != nil {
		return err
	}
	d.scen, err = scenario.Build(nil, scenario.Options{Log: d.log, BeforeDaemons: func(s *scenario.Scenario) error {
		d.say("  hosts       %s %s, %s %s, %s %s (network namespaces)", s.Web.Name, s.Web.Addr, s.DB.Name, s.DB.Addr, s.Attacker.Name, s.Attacker.Addr)
		return d.startAgents(proxyAddr, s.Web, s.DB)
	}})
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	s := d.scen
	d.onStop("scenario", s.Close)
	d.say("  web-1       apache2 (pid %d) serving %s", s.ApachePID, s.URL)
	d.say("  db-1        sshd (pid %d) on %s:22", s.SSHDPID, s.DB.Addr)
	if err := d.addOperator(ctx); err != nil {
		return err
	}
	d.say("  operator    %s (analyst), certificate %s", operatorName, d.res.Operator.Cert)
	if err := d.waitAddresses(ctx); err != nil {
		return err
	}
	d.timing("set-up (CA, center, proxy, hosts, agents, fleet registry)", time.Since(t1))

	if err := d.attack(ctx); err != nil {
		return err
	}
	if err := d.exportAndVerify(ctx); err != nil {
		return err
	}
	if err := d.report(ctx); err != nil {
		return err
	}
	if d.opts.Keep {
		d.keep(ctx)
	}
	return nil
}

// wait polls check until it says done, ctx ends, the attack failed, or
// timeout passes; it prints a line every few seconds while it waits. On
// timeout the error names what did not happen and what was seen (seen).
func (d *run) wait(ctx context.Context, what string, timeout time.Duration, seen func() string, check func() (bool, error)) error {
	start := time.Now()
	deadline := start.Add(timeout)
	nextNote := start.Add(5 * time.Second)
	for {
		ok, err := check()
		if err != nil {
			return fmt.Errorf("demo: waiting for %s: %w", what, err)
		}
		if ok {
			return nil
		}
		if d.attackDone != nil {
			select {
			case <-d.attackDone:
				if d.attackErr != nil {
					return fmt.Errorf("demo: waiting for %s: the attack failed: %w\n%s", what, d.attackErr, d.attackBody)
				}
			default:
			}
		}
		now := time.Now()
		if now.After(deadline) {
			return fmt.Errorf("demo: %s %w: not within %v; %s", what, ErrTimeout, timeout, seen())
		}
		if now.After(nextNote) {
			d.say("              ... still waiting for %s (%v)", what, now.Sub(start).Round(time.Second))
			nextNote = now.Add(5 * time.Second)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("demo: waiting for %s: %w", what, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitAddresses waits until both agents' health reports put their hosts'
// addresses in the fleet registry: the center links a connect to a host
// only by an address that host reported.
func (d *run) waitAddresses(ctx context.Context) error {
	db := d.sql.ReadOnly()
	want := map[string]string{WebHost: d.scen.Web.Addr.String(), DBHost: d.scen.DB.Addr.String()}
	has := func(host string) bool {
		var n int
		err := db.QueryRowContext(ctx, `SELECT count(*) FROM host_addresses WHERE agent_id = ? AND ip = ?`, host, want[host]).Scan(&n)
		return err == nil && n > 0
	}
	err := d.wait(ctx, "both agents' addresses in the fleet registry", healthTimeout,
		func() string {
			return fmt.Sprintf("registered: web-1 %s %v, db-1 %s %v (agents send a health report a second after they start)",
				want[WebHost], has(WebHost), want[DBHost], has(DBHost))
		},
		func() (bool, error) { return has(WebHost) && has(DBHost), nil })
	if err != nil {
		return err
	}
	d.say("  registry    web-1 owns %s, db-1 owns %s (from the agents' health reports)", want[WebHost], want[DBHost])
	return nil
}

// attack sends the exploit and follows the chain at the center.
func (d *run) attack(ctx context.Context) error {
	s := d.scen
	payload, err := s.Payload(remoteCommand)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	// The pause goes between the injected lookup and ssh, on web-1.
	rest, ok := strings.CutPrefix(payload, "127.0.0.1; ")
	if !ok {
		return fmt.Errorf("demo: the scenario's payload no longer starts with the lookup: %q", payload)
	}
	host := fmt.Sprintf("127.0.0.1; sleep %d; %s", int(webPause/time.Second), rest)

	d.say("\n== the attack")
	d.say("  from %s: GET %s?host=<injection>", s.Attacker.Name, s.URL)
	d.say("  injected:   %s", host)
	d.say("  (bash pauses %v before ssh, and the commands on db-1 pause %v before they run, so that the alert -> trace", webPause, dbPause)
	d.say("   round trip ends before ssh connects and the fan-out before db-1's commands run: a trace sees what")
	d.say("   happens after it starts)")
	d.attackDone = make(chan struct{})
	d.attackStart = time.Now()
	go func() {
		defer close(d.attackDone)
		actx, cancel := context.WithTimeout(ctx, attackTimeout)
		defer cancel()
		d.attackBody, d.attackErr = s.Lookup(actx, host) // the page's lookup, given the injection
	}()
	since := func() string { return "+" + time.Since(d.attackStart).Round(10*time.Millisecond).String() }
	db := d.sql.ReadOnly()

	// 1. The alert on web-1.
	var (
		alertID            int64
		alertPID           uint32
		alertStart         uint64
		severity, tech, tr string
	)
	err = d.wait(ctx, "the alert "+RuleID+" on web-1", alertTimeout,
		func() string { return "no such alert in the center's alerts table" },
		func() (bool, error) {
			var pid, start int64
			err := db.QueryRowContext(ctx, `SELECT id, pid, start, severity, technique, coalesce(trace_id, '') FROM alerts
				WHERE rule_id = ? AND host = ? ORDER BY id LIMIT 1`, RuleID, WebHost).Scan(&alertID, &pid, &start, &severity, &tech, &tr)
			if errors.Is(err, sql.ErrNoRows) {
				return false, nil
			}
			alertPID, alertStart = uint32(pid), uint64(start)
			return err == nil, err
		})
	if err != nil {
		return err
	}
	d.res.AlertID = alertID
	d.timing("attack -> alert at the center", time.Since(d.attackStart))
	web, _, err := d.sql.Process(ctx, WebHost, alertPID, alertStart)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	d.res.Web = web
	d.say("  %-9s alert #%d %s (%s, ATT&CK %s) on web-1: %s pid %d", since(), alertID, RuleID, severity, tech, orUnknown(web.Comm), alertPID)

	// 2. The trace the rule asked for, running on web-1.
	var traceID, state, why string
	err = d.wait(ctx, "the rule's trace running on web-1 (the agent's answer)", traceTimeout,
		func() string {
			if traceID == "" {
				return "no trace on the alert's process (center.rules.trace_policy must be auto)"
			}
			return fmt.Sprintf("trace %s is %s", traceID, state)
		},
		func() (bool, error) {
			err := db.QueryRowContext(ctx, `SELECT trace_id, state, coalesce(stop_reason, '') FROM traces
				WHERE host = ? AND pid = ? AND start = ? ORDER BY created LIMIT 1`, WebHost, int64(alertPID), int64(alertStart)).Scan(&traceID, &state, &why)
			if errors.Is(err, sql.ErrNoRows) {
				return false, nil
			}
			if err != nil {
				return false, err
			}
			switch state {
			case "active":
				return true, nil
			case "refused", "failed", "expired", "stopped":
				return false, fmt.Errorf("trace %s on web-1 is %s: %s", traceID, state, why)
			}
			return false, nil
		})
	if err != nil {
		return err
	}
	d.res.TraceID = traceID
	traceAfter := time.Since(d.attackStart)
	d.timing("attack -> trace running on web-1", traceAfter)
	d.say("  %-9s trace %s started on web-1 at bash (pid %d) by rule %s; the agent confirmed it", since(), traceID, alertPID, RuleID)

	// 3. The traced connect to db-1:22, a link once db-1's accept is in.
	var link sqlstore.Link
	var links []sqlstore.Link
	err = d.wait(ctx, "the link web-1 -> db-1:22 (a traced connect matched with db-1's accept)", linkTimeout,
		func() string {
			if len(links) == 0 {
				return fmt.Sprintf("trace %s has no link: no traced connect to an address db-1 owns reached the center (trace events from web-1: %d;"+
					" the trace ran %v after the request, bash paused %v before ssh)",
					traceID, d.hostEvents(ctx, traceID, WebHost), traceAfter.Round(10*time.Millisecond), webPause)
			}
			return fmt.Sprintf("links of trace %s: %+v (to_pid 0: db-1's accept not matched yet)", traceID, links)
		},
		func() (bool, error) {
			var err error
			if links, err = d.sql.Links(ctx, traceID); err != nil {
				return false, err
			}
			for _, l := range links {
				if l.FromHost == WebHost && l.ToHost == DBHost && l.Dst.Port() == 22 && l.To.PID != 0 {
					link = l
					return true, nil
				}
			}
			return false, nil
		})
	if err != nil {
		return err
	}
	d.res.Link = link
	d.timing("attack -> link web-1 -> db-1:22", time.Since(d.attackStart))
	from, _, _ := d.sql.Process(ctx, WebHost, link.From.PID, link.From.Start)
	to, _, _ := d.sql.Process(ctx, DBHost, link.To.PID, link.To.Start)
	d.res.DB = to
	d.say("  %-9s link #%d: %s (pid %d) on web-1 connected %s -> %s, accepted on db-1 by %s (pid %d)", since(), link.ID,
		orUnknown(from.Comm), link.From.PID, link.Src, link.Dst, orUnknown(to.Comm), link.To.PID)

	// 4. The fan-out: the same trace on db-1, rooted at the accepting
	// process.
	var target struct {
		pid, start, linkID int64
		state              string
	}
	err = d.wait(ctx, "the fan-out of trace "+traceID+" to db-1", fanoutTimeout,
		func() string {
			if target.state == "" {
				return fmt.Sprintf("no trace_targets row on db-1: the center did not fan the trace out along link #%d (center.traces.auto_follow is on)", link.ID)
			}
			return fmt.Sprintf("the target on db-1 (pid %d) is %s: the agent has not confirmed it", target.pid, target.state)
		},
		func() (bool, error) {
			err := db.QueryRowContext(ctx, `SELECT pid, start, coalesce(link_id, 0), state FROM trace_targets WHERE trace_id = ? AND host = ?
				ORDER BY added LIMIT 1`, traceID, DBHost).Scan(&target.pid, &target.start, &target.linkID, &target.state)
			if errors.Is(err, sql.ErrNoRows) {
				return false, nil
			}
			if err != nil {
				return false, err
			}
			switch target.state {
			case "active":
				return true, nil
			case "refused", "failed", "expired":
				return false, fmt.Errorf("the fan-out of trace %s to db-1 is %s (see the ledger's trace.agent_answer)", traceID, target.state)
			}
			return false, nil
		})
	if err != nil {
		return err
	}
	d.timing("attack -> trace fanned out to db-1", time.Since(d.attackStart))
	d.say("  %-9s trace %s fanned out to db-1 at pid %d (link #%d); db-1's agent confirmed it", since(), traceID, target.pid, target.linkID)

	// 5. Trace events from db-1.
	err = d.wait(ctx, "trace events of "+traceID+" from db-1", eventsTimeout,
		func() string { return "the trace runs on db-1 but none of its events reached the center" },
		func() (bool, error) { return d.hostEvents(ctx, traceID, DBHost) > 0, nil })
	if err != nil {
		return err
	}
	d.timing("attack -> first trace events from db-1", time.Since(d.attackStart))
	d.say("  %-9s trace events from db-1 under the same trace_id", since())

	// 6. The attack's end, and the last events of the chain.
	select {
	case <-d.attackDone:
	case <-ctx.Done():
		return ctx.Err()
	}
	if d.attackErr != nil {
		return fmt.Errorf("demo: the attack failed: %w\n%s", d.attackErr, d.attackBody)
	}
	d.timing("attack request (response received)", time.Since(d.attackStart))
	d.say("  %-9s the attacker's response (db-1's output through web-1):", since())
	for _, l := range strings.Split(strings.TrimSpace(d.attackBody), "\n") {
		if r := []rune(l); len(r) > 110 {
			l = string(r[:109]) + "…"
		}
		d.say("              | %s", l)
	}
	last := -1
	quietSince := time.Now()
	err = d.wait(ctx, "the end of ssh at the center and the trace's last events", settleTimeout,
		func() string { return fmt.Sprintf("no exit of ssh (pid %d) on web-1 at the center", link.From.PID) },
		func() (bool, error) {
			var n int
			if err := db.QueryRowContext(ctx, `SELECT count(*) FROM process_events WHERE host = ? AND pid = ? AND start = ? AND kind = 'exit'`,
				WebHost, int64(link.From.PID), int64(link.From.Start)).Scan(&n); err != nil {
				return false, err
			}
			total := d.hostEvents(ctx, traceID, WebHost) + d.hostEvents(ctx, traceID, DBHost)
			if total != last {
				last, quietSince = total, time.Now()
			}
			return n > 0 && time.Since(quietSince) > time.Second, nil
		})
	if err != nil {
		return err
	}

	// 7. The analyst stops the trace on both hosts.
	if err := d.api.stopTrace(ctx, traceID, "demo: the attack is over; exporting the evidence"); err != nil {
		return fmt.Errorf("demo: stop trace %s: %w", traceID, err)
	}
	stopped := map[string]bool{}
	err = d.wait(ctx, "both agents' stop notes", stopTimeout,
		func() string { return fmt.Sprintf("stop notes from %v only", stopped) },
		func() (bool, error) {
			rows, err := db.QueryContext(ctx, `SELECT DISTINCT host FROM trace_notes WHERE trace_id = ? AND what = 'stop'`, traceID)
			if err != nil {
				return false, err
			}
			defer rows.Close()
			for rows.Next() {
				var h string
				if err := rows.Scan(&h); err != nil {
					return false, err
				}
				stopped[h] = true
			}
			return stopped[WebHost] && stopped[DBHost], rows.Err()
		})
	if err != nil {
		// The package proves what arrived; a stop note that is late
		// only means the package does not show the trace's end.
		d.say("  note: %v; exporting what the center has", err)
	} else {
		d.say("  %-9s %s stopped the trace; both agents confirmed with their stop notes", since(), operatorName)
	}
	return nil
}

// hostEventsSQL counts a trace's events from one host: distinct places in
// the agent's batches, whichever table holds them.
var hostEventsSQL = func() string {
	parts := make([]string, len(sqlstore.TraceTables))
	for i, t := range sqlstore.TraceTables {
		parts[i] = `SELECT batch_seq, idx FROM ` + t + ` WHERE trace_id = ?1 AND host = ?2`
	}
	return `SELECT count(*) FROM (` + strings.Join(parts, " UNION ") + `)`
}()

// hostEvents counts the trace's events from host at the center (0 on an
// error, which the next poll repeats).
func (d *run) hostEvents(ctx context.Context, traceID, host string) int {
	var n int
	if err := d.sql.ReadOnly().QueryRowContext(ctx, hostEventsSQL, traceID, host).Scan(&n); err != nil {
		return 0
	}
	return n
}

// exportAndVerify exports the package as the analyst, through the API
// (the export is recorded in the ledger first, and the package proves
// that record), writes it to Dir, and checks the file offline with the CA
// certificate alone.
func (d *run) exportAndVerify(ctx context.Context) error {
	id := d.res.TraceID
	t := time.Now()
	pkg, err := d.api.export(ctx, id, "demo: evidence of the web-1 -> db-1 intrusion")
	if err != nil {
		return fmt.Errorf("demo: export trace %s: %w", id, err)
	}
	path := filepath.Join(d.dir, "trace-"+id+".pkg")
	if err := atomicfile.Write(path, pkg, 0o640); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	d.res.Package = path
	d.timing("export through the API", time.Since(t))

	// Offline: the file and the CA certificate, nothing of the center.
	t = time.Now()
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	ca, err := pki.LoadCACert(d.caCert)
	if err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	rep, err := ledger.VerifyPackage(b, ca)
	if err != nil {
		return fmt.Errorf("demo: the exported package %s does not verify: %w", path, err)
	}
	if rep.TraceID != id {
		return fmt.Errorf("demo: the package %s is of trace %s, not %s", path, rep.TraceID, id)
	}
	d.res.Report = rep
	d.timing("offline verification", time.Since(t))
	return nil
}

// keep leaves everything running until ctx ends.
func (d *run) keep(ctx context.Context) {
	d.say("\n== kept running (--keep): the center, the proxy, both agents and the hosts run until Ctrl-C")
	<-ctx.Done()
	d.say("stopping")
}

func orUnknown(comm string) string {
	if comm == "" {
		return "(unknown)"
	}
	return comm
}

// kindName is a capture kind's name for the summary.
func kindName(k string) string {
	if k == capture.KindTraceNote.String() {
		return "note"
	}
	return k
}
