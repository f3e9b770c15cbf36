package demo

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/internal/scenario"
	"github.com/evilbitlabs/daemoneye/internal/testenv"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// needRoot skips without root, except under CI, where a runner without
// the privilege is broken; it installs the scenario's software when it is
// missing (a failed install fails under CI and skips otherwise).
func needRoot(t *testing.T) {
	t.Helper()
	testenv.NeedRoot(t) // network namespaces, eBPF
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	if err := scenario.Install(ctx, nil); err != nil {
		testenv.Skip(t, "scenario software missing and not installable here: %v", err)
	}
}

// The whole chain of issue 7, as `make demo` runs it, checked against the
// center's SQL store and the exported package rather than against what
// the demo printed: apache2 -> bash -> ssh on web-1 and sshd -> shell on
// db-1 by the parent links of process_events, the link web-1 -> db-1:22
// with its accepting process, one trace_id on both hosts, and a package
// that verifies with the CA certificate alone.
func TestDemoEndToEnd(t *testing.T) {
	needRoot(t)
	dir := t.TempDir()
	var out bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// Run stops what it started and removes the hosts before it returns,
	// on failure too.
	res, err := Run(ctx, Options{Dir: dir, Out: &out, APIListen: "127.0.0.1:0", Version: "test"})
	t.Logf("demo output:\n%s", out.String())
	if err != nil {
		if b, rerr := os.ReadFile(filepath.Join(dir, "demo.log")); rerr == nil {
			t.Logf("roles' log (end):\n%s", tail(string(b), 8000))
		}
		t.Fatalf("demo: %v", err)
	}

	st, err := sqlstore.Open(res.CenterDB, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	db := st.ReadOnly()
	bg := context.Background()

	// The link: a traced connect on web-1 to db-1:22, with the process on
	// db-1 that accepted it, and the trace followed along it.
	var (
		linkID, fromPID, fromStart, toPID, toStart int64
		traceID                                    string
		followed                                   sql.NullInt64
	)
	err = db.QueryRowContext(bg, `SELECT id, trace_id, from_pid, from_start, to_pid, to_start, followed FROM links
		WHERE from_host = ? AND to_host = ? AND dst_port = 22 AND to_pid IS NOT NULL ORDER BY id LIMIT 1`, WebHost, DBHost).
		Scan(&linkID, &traceID, &fromPID, &fromStart, &toPID, &toStart, &followed)
	if err != nil {
		t.Fatalf("no links row web-1 -> db-1:22 with to_pid filled: %v", err)
	}
	if !followed.Valid {
		t.Errorf("link #%d was not followed (the fan-out to db-1 is not recorded on it)", linkID)
	}
	if traceID != res.TraceID {
		t.Errorf("link #%d is of trace %s; the demo followed %s", linkID, traceID, res.TraceID)
	}

	// web-1: apache2 -> apache2 (worker) -> bash -> ssh, each step by a
	// process_events row naming its parent.
	ssh := key(fromPID, fromStart)
	chain := ancestry(t, db, WebHost, ssh, 3)
	if got := comms(chain); !slices.Equal(got, []string{"ssh", "bash", "apache2", "apache2"}) {
		t.Errorf("web-1: the connecting process's line of descent is %v, want ssh <- bash <- apache2 <- apache2", got)
	}
	// The rule's alert and the trace's root are that bash.
	bash := chain[1].key
	var alerts int
	db.QueryRowContext(bg, `SELECT count(*) FROM alerts WHERE rule_id = ? AND host = ? AND pid = ? AND start = ?`,
		RuleID, WebHost, bash.PID, bash.Start).Scan(&alerts)
	if alerts != 1 {
		t.Errorf("%d %s alerts on web-1's bash (pid %d), want 1", alerts, RuleID, bash.PID)
	}
	var root capture.ProcKey
	var rootHost string
	if err := db.QueryRowContext(bg, `SELECT host, pid, start FROM traces WHERE trace_id = ?`, traceID).Scan(&rootHost, &root.PID, &root.Start); err != nil {
		t.Fatal(err)
	}
	if rootHost != WebHost || root != bash {
		t.Errorf("trace %s is rooted at %s %v, want web-1's bash %v", traceID, rootHost, root, bash)
	}
	var tracedConnects int
	db.QueryRowContext(bg, `SELECT count(*) FROM network_events WHERE host = ? AND pid = ? AND start = ? AND kind = 'connect'
		AND trace_id = ? AND dst_port = 22`, WebHost, ssh.PID, ssh.Start, traceID).Scan(&tracedConnects)
	if tracedConnects == 0 {
		t.Errorf("no connect of ssh to port 22 under trace %s on web-1", traceID)
	}

	// db-1: the shell that ran the injected commands descends from the
	// sshd that accepted the connection, through sshd processes only.
	var shellPID, shellStart int64
	if err := db.QueryRowContext(bg, `SELECT pid, start FROM process_events WHERE host = ? AND kind = 'exec' AND comm = 'bash'
		AND cmdline LIKE '%db-host=%' ORDER BY time LIMIT 1`, DBHost).Scan(&shellPID, &shellStart); err != nil {
		t.Fatalf("no exec of the injected shell on db-1: %v", err)
	}
	shell := key(shellPID, shellStart)
	accepted := key(toPID, toStart)
	up := ancestry(t, db, DBHost, shell, 4)
	at := slices.IndexFunc(up, func(p proc) bool { return p.key == accepted })
	if at < 1 {
		t.Fatalf("db-1: the shell's line of descent %v does not reach the accepting process %v", up, accepted)
	}
	for _, p := range up[1 : at+1] {
		if p.comm != "sshd" {
			t.Errorf("db-1: %v between the shell and the accepting sshd, want sshd processes only (line %v)", p, up[:at+1])
		}
	}
	// And the commands it ran were traced under the same trace_id.
	var tracedCmds int
	db.QueryRowContext(bg, `SELECT count(*) FROM process_events WHERE host = ? AND kind = 'exec' AND comm = 'uname'
		AND ppid = ? AND pstart = ? AND trace_id = ?`, DBHost, shell.PID, shell.Start, traceID).Scan(&tracedCmds)
	if tracedCmds == 0 {
		t.Errorf("no traced exec of uname by db-1's shell under trace %s", traceID)
	}

	// One trace_id on both hosts.
	for _, host := range []string{WebHost, DBHost} {
		ids := traceIDs(t, db, host)
		if !slices.Equal(ids, []string{traceID}) {
			t.Errorf("%s: trace events carry trace ids %v, want only %s", host, ids, traceID)
		}
	}
	var targets int
	db.QueryRowContext(bg, `SELECT count(*) FROM trace_targets WHERE trace_id = ? AND host = ? AND pid = ? AND start = ? AND link_id = ?`,
		traceID, DBHost, accepted.PID, accepted.Start, linkID).Scan(&targets)
	if targets != 1 {
		t.Errorf("trace %s has %d targets on db-1 at the accepting sshd through link #%d, want 1", traceID, targets, linkID)
	}

	// The package verifies with the CA certificate alone and holds both
	// hosts' events.
	b, err := os.ReadFile(res.Package)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := pki.LoadCACert(res.CACert)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := ledger.VerifyPackage(b, ca)
	if err != nil {
		t.Fatalf("package %s: %v", res.Package, err)
	}
	if rep.TraceID != traceID {
		t.Errorf("package is of trace %s, want %s", rep.TraceID, traceID)
	}
	hosts := map[string]int{}
	for _, h := range rep.Hosts {
		hosts[h.Host] = h.Events
	}
	if hosts[WebHost] == 0 || hosts[DBHost] == 0 {
		t.Errorf("package proves events by host %v, want events from both web-1 and db-1", hosts)
	}
	if rep.Export.Actor != operatorName && !strings.HasSuffix(rep.Export.Actor, ":"+operatorName) {
		t.Errorf("package's export record is by %q, want the demo's analyst %s", rep.Export.Actor, operatorName)
	}
}

// proc is a process on the line of descent.
type proc struct {
	key  capture.ProcKey
	comm string
}

func key(pid, start int64) capture.ProcKey {
	return capture.ProcKey{PID: uint32(pid), Start: uint64(start)}
}

// ancestry returns p and up to n of its ancestors on host, each parent
// read from the process's own fork or exec row in process_events, each
// comm from its last such row; the line ends early at a parent the host's
// events do not show.
func ancestry(t *testing.T, db *sql.DB, host string, p capture.ProcKey, n int) []proc {
	t.Helper()
	var out []proc
	for i := 0; i <= n; i++ {
		var (
			comm         string
			ppid, pstart sql.NullInt64
		)
		err := db.QueryRow(`SELECT comm FROM process_events WHERE host = ? AND pid = ? AND start = ? AND kind IN ('fork', 'exec')
			ORDER BY time DESC, id DESC LIMIT 1`, host, p.PID, p.Start).Scan(&comm)
		if errors.Is(err, sql.ErrNoRows) {
			if i == 0 {
				t.Fatalf("%s: no fork or exec of %v in process_events", host, p)
			}
			break // a parent outside the host (the demo process started the daemons)
		}
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, proc{p, comm})
		if i == n {
			break
		}
		err = db.QueryRow(`SELECT ppid, pstart FROM process_events WHERE host = ? AND pid = ? AND start = ? AND kind IN ('fork', 'exec')
			AND ppid IS NOT NULL ORDER BY time, id LIMIT 1`, host, p.PID, p.Start).Scan(&ppid, &pstart)
		if errors.Is(err, sql.ErrNoRows) {
			t.Fatalf("%s: %v (%s) has no parent in process_events (line so far %v)", host, p, comm, out)
		}
		if err != nil {
			t.Fatal(err)
		}
		p = key(ppid.Int64, pstart.Int64)
	}
	return out
}

func comms(ps []proc) []string {
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.comm
	}
	return out
}

// traceIDs lists the trace ids of host's trace events at the center.
func traceIDs(t *testing.T, db *sql.DB, host string) []string {
	t.Helper()
	var parts []string
	for _, tbl := range sqlstore.TraceTables {
		parts = append(parts, `SELECT trace_id FROM `+tbl+` WHERE host = ?1 AND trace_id IS NOT NULL`)
	}
	rows, err := db.Query(`SELECT DISTINCT trace_id FROM (`+strings.Join(parts, " UNION ")+`) ORDER BY 1`, host)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var out []string
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		out = append(out, id)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}
