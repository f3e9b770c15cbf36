package treetest

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/roles/center"
)

// A rule's trace request under the "approval" policy: the alert creates a
// pending trace and an approval request; an approver approves it through
// the API; the trace starts on the agent.
func TestRuleTraceAfterApproval(t *testing.T) {
	needRootEBPF(t)
	tr := New(t)
	c := tr.NewCenter("center")
	apiAddr := freeTCP(t)
	c.Cfg.API.Listen = apiAddr
	c.Cfg.Rules.TracePolicy = "approval"
	c.Start()
	addOperator(t, c, "carol", center.RoleApprover)
	ag := tr.newRealAgent("host-p", c.Cfg.Listen)
	ag.Start()
	carol := tr.newOperator("carol", apiAddr)

	// A program run from a temporary directory (exec-from-temp-dir asks for
	// a trace); it stays up so the trace has something to follow.
	dropper := filepath.Join(t.TempDir(), "payload")
	b, err := os.ReadFile("/bin/sleep")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(dropper, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(dropper, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	ctx := context.Background()

	var traceID string
	var approval int64
	eventually(t, 30*time.Second, "a pending rule trace and its approval request", func() bool {
		err := c.SQL.ReadOnly().QueryRowContext(ctx, `SELECT t.trace_id, a.id FROM traces t JOIN approvals a
			ON a.subject_kind = 'trace' AND a.subject_id = t.trace_id
			WHERE t.host = 'host-p' AND t.pid = ? AND t.state = 'pending' AND t.initiated_by = 'rule:exec-from-temp-dir'`, pid).Scan(&traceID, &approval)
		return err == nil
	})
	code, resp := carol.do(t, "POST", fmt.Sprintf("/api/v1/approvals/%d", approval), map[string]string{"decision": "approve", "reason": "payload in /tmp: trace it"})
	if code != http.StatusOK {
		t.Fatalf("approve: %d %v", code, resp)
	}
	eventually(t, 30*time.Second, "the approved rule trace active on the agent", func() bool {
		var state string
		c.SQL.ReadOnly().QueryRowContext(ctx, `SELECT state FROM traces WHERE trace_id = ?`, traceID).Scan(&state)
		return state == "active"
	})
	a := c.Acks("trace-start-" + traceID + "@host-p")
	if len(a) == 0 || a[len(a)-1].Detail == "" {
		t.Fatalf("agent answer %+v", a)
	}
	t.Logf("agent: %s", a[len(a)-1].Detail)
}
