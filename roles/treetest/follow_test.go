package treetest

import (
	"bufio"
	"context"
	"database/sql"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/internal/testnet"
	"github.com/evilbitlabs/daemoneye/roles/center"

	_ "modernc.org/sqlite"
)

// A traced process on host a connects to host b, where another agent runs:
// the center sees the link, fans the trace out to the process that accepted
// on b, and b's agent traces the session's shell under the same trace_id.
func TestTraceFollowsConnection(t *testing.T) {
	needRootEBPF(t)
	t.Run("auto-follow", func(t *testing.T) { followCase(t, true) })
	t.Run("analyst-follows", func(t *testing.T) { followCase(t, false) })
}

// followCase runs the chain with the center's auto-follow on, or off with
// an analyst following the link through the API.
func followCase(t *testing.T, auto bool) {
	nw, err := testnet.New(t, "follow")
	if err != nil {
		t.Fatal(err)
	}
	ha, err := nw.AddHost("a")
	if err != nil {
		t.Fatal(err)
	}
	hb, err := nw.AddHost("b")
	if err != nil {
		t.Fatal(err)
	}
	tr := New(t)
	c := tr.NewCenter("center")
	c.Cfg.Traces.AutoFollow = auto
	apiAddr := freeTCP(t)
	c.Cfg.API.Listen = apiAddr
	c.Start()
	addOperator(t, c, "dana", center.RoleAnalyst)
	dana := tr.newOperator("dana", apiAddr)
	agA := tr.newRealAgent("host-a", c.Cfg.Listen)
	agA.Cfg.Scope = "netns:" + ha.NamespacePath()
	agA.Start()
	agB := tr.newRealAgent("host-b", c.Cfg.Listen)
	agB.Cfg.Scope = "netns:" + hb.NamespacePath()
	agB.Start()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Both agents must have reported their addresses: the link is found by
	// the destination address.
	eventually(t, 30*time.Second, "host-b's address in the fleet registry", func() bool {
		ids, _ := c.SQL.HostsByAddr(ctx, hb.Addr)
		return len(ids) == 1 && ids[0] == "host-b"
	})

	port := 4022
	// The server on host b accepts one connection, waits for a line, then
	// runs a shell for it, as sshd does for a session (perl: in every
	// Debian base system).
	srv := hb.Command(ctx, "/usr/bin/perl", "-e", `use IO::Socket::INET; $| = 1;
my $s = IO::Socket::INET->new(LocalAddr => $ARGV[0], Listen => 1, ReuseAddr => 1) or die "listen: $!";
print "listening\n";
my $c = $s->accept or die "accept: $!";
my $l = <$c>; $l =~ s/\s+//g;
my $o = qx(/bin/sh -c "echo session:$l; /bin/true");
print $c $o; close $c;`, net.JoinHostPort(hb.Addr.String(), strconv.Itoa(port)))
	srvOut, _ := srv.StdoutPipe()
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { srv.Process.Kill(); srv.Wait() }()
	if sc := bufio.NewScanner(srvOut); !sc.Scan() || sc.Text() != "listening" {
		t.Fatalf("listener did not start: %q", sc.Text())
	}

	// On host a: a shell that connects, waits, then asks for a session.
	cli := ha.Command(ctx, "/bin/bash", "-c", fmt.Sprintf(`read go; exec 3<>/dev/tcp/%s/%d; sleep 3; echo hello >&3; cat <&3; exec 3>&-`, hb.Addr, port))
	stdin, _ := cli.StdinPipe()
	if err := cli.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cli.Process.Kill(); cli.Wait() }()
	pid := cli.Process.Pid
	start := procStart(t, pid)
	eventually(t, 30*time.Second, "the client shell at the center", func() bool {
		_, ok, _ := c.SQL.Process(ctx, "host-a", uint32(pid), start)
		return ok
	})
	const id = "tr-follow-1"
	if err := insertTrace(ctx, c, id, "host-a", uint32(pid), start); err != nil {
		t.Fatal(err)
	}
	if err := c.RequestTrace(ctx, center.TraceRequest{TraceID: id, Host: "host-a", PID: uint32(pid), Start: start, Depth: 4,
		Flags: center.TraceFiles | center.TraceNetwork | center.TraceCmdlines, InitiatedBy: "rule:follow-test",
		Caps: center.TraceCaps{MaxDurationS: 600, MaxBytes: 64 << 20, MaxEPS: 5000}, Reason: "follow test"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, "the trace active on host-a", func() bool {
		a := c.Acks("trace-start-" + id + "@host-a")
		return len(a) > 0
	})
	fmt.Fprintln(stdin, "go")

	defer func() {
		if !t.Failed() {
			return
		}
		links, err := c.SQL.Links(ctx, id)
		t.Logf("links: %+v %v", links, err)
		for _, e := range traceEvents(centerEvents(t, c, "host-a"), id) {
			if e.Conn != nil || e.Sock != nil {
				t.Logf("host-a trace event %v %+v %+v", e.Kind, e.Conn, e.Sock)
			}
		}
		for _, e := range centerEvents(t, c, "host-b") {
			if e.Kind == capture.KindAccept {
				t.Logf("host-b accept %v pid %d", e.Conn, e.Proc.PID)
			}
		}
		t.Logf("acks b: %+v", c.Acks("trace-start-"+id+"@host-b"))
		if hs, err := c.SQL.Hosts(ctx); err == nil {
			for _, h := range hs {
				t.Logf("host %s lost %v health %s", h.AgentID, h.LostEvents, h.Health)
			}
		}
		for _, e := range centerEvents(t, c, "host-b") {
			t.Logf("host-b event %s %v pid %d trace %q seq %d note %+v", time.Unix(0, e.Time).Format("15:04:05.000"), e.Kind, e.Proc.PID, e.TraceID, e.TraceSeq, e.Note)
		}
	}()
	if !auto {
		var link int64
		eventually(t, 30*time.Second, "the link with its accepting process", func() bool {
			links, _ := c.SQL.Links(ctx, id)
			if len(links) == 1 && !links[0].To.IsZero() {
				link = links[0].ID
				return true
			}
			return false
		})
		if code, resp := dana.do(t, "POST", fmt.Sprintf("/api/v1/links/%d/follow", link), map[string]string{"reason": "follow the session to host-b"}); code != http.StatusOK {
			t.Fatalf("follow: %d %v", code, resp)
		}
		if code, _ := dana.do(t, "POST", fmt.Sprintf("/api/v1/links/%d/follow", link), map[string]string{"reason": "follow the session again"}); code != http.StatusConflict {
			t.Errorf("following a followed link: HTTP %d, want 409", code)
		}
	}
	eventually(t, 60*time.Second, "the fan-out to host-b and the session shell traced there", func() bool {
		evs := traceEvents(centerEvents(t, c, "host-b"), id)
		for _, e := range evs {
			if e.Kind == capture.KindExec && e.Exec != nil && e.Exec.Exe == "/usr/bin/true" {
				return true
			}
		}
		return false
	})
	links, err := c.SQL.Links(ctx, id)
	if err != nil || len(links) != 1 {
		t.Fatalf("links of the trace: %v, %v; want one", links, err)
	}
	l := links[0]
	if l.FromHost != "host-a" || l.ToHost != "host-b" || l.Dst.Port() != uint16(port) || l.To.PID != uint32(srv.Process.Pid) || l.Followed.IsZero() {
		t.Errorf("link %+v: want host-a -> host-b:%d accepted by pid %d, followed", l, port, srv.Process.Pid)
	}
	var n int
	if err := c.SQL.ReadOnly().QueryRowContext(ctx, `SELECT count(*) FROM trace_targets WHERE trace_id = ? AND host = 'host-b' AND link_id = ? AND state IN ('active', 'stopped')`,
		id, l.ID).Scan(&n); err != nil || n != 1 {
		t.Errorf("trace target on host-b for link %d: %d rows (%v), want 1 (active, or stopped once its lineage ended)", l.ID, n, err)
	}
}

// insertTrace records a trace row as the API or a rule would.
func insertTrace(ctx context.Context, c *Center, id, host string, pid uint32, start uint64) error {
	db, err := sql.Open("sqlite", c.SQL.Path()+"?_pragma=busy_timeout(10000)")
	if err != nil {
		return err
	}
	defer db.Close()
	now := time.Now().UnixNano()
	if _, err := db.ExecContext(ctx, `INSERT INTO traces (trace_id, host, pid, start, depth, flags, caps, state, created, initiated_by, reason)
		VALUES (?, ?, ?, ?, 4, 7, '{"max_duration_s":600,"max_bytes":67108864,"max_eps":5000}', 'approved', ?, 'rule:follow-test', 'follow test')`,
		id, host, int64(pid), int64(start), now); err != nil {
		return err
	}
	_, err = db.ExecContext(ctx, `INSERT INTO trace_targets (trace_id, host, pid, start, state, added) VALUES (?, ?, ?, ?, 'approved', ?)`,
		id, host, int64(pid), int64(start), now)
	return err
}
