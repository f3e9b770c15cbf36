package center

import (
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/privacy"
)

// TestAPISandboxMasks: the SQL sandbox is no way around masking: command
// lines, environments and alert contexts read as NULL, the reply names the
// masked columns, and a reveal (with its reason, in the ledger) is how an
// analyst sees them.
func TestAPISandboxMasks(t *testing.T) {
	e := newAPIEnv(t, config.API{})
	for _, c := range []struct {
		sql    string
		masked []string
	}{
		{`SELECT pid, argv, cmdline FROM processes`, []string{"processes.argv", "processes.cmdline"}},
		{`SELECT * FROM process_events WHERE kind = 'exec'`, []string{"process_events.argv", "process_events.cmdline", "process_events.env"}},
		{`SELECT rule_id, context FROM alerts`, []string{"alerts.context"}},
		{`SELECT group_concat(json_extract(argv, '$[2]')) FROM process_events`, []string{"process_events.argv"}},
		{`SELECT pid FROM processes`, []string{}},
	} {
		r := e.as("ana", "POST", "/api/v1/query", map[string]any{"sql": c.sql})
		if r.status != http.StatusOK {
			t.Fatalf("%s: %d %q", c.sql, r.status, r.err())
		}
		if strings.Contains(r.raw, secretArg) || strings.Contains(r.raw, "root@db-1") {
			t.Errorf("%s: the sandbox shows a masked argument: %s", c.sql, r.raw)
		}
		var got []string
		for _, m := range r.body["masked_columns"].([]any) {
			got = append(got, m.(string))
		}
		if !slices.Equal(got, c.masked) && !(len(got) == 0 && len(c.masked) == 0) {
			t.Errorf("%s: masked_columns %v, want %v", c.sql, got, c.masked)
		}
	}
}

// TestAPIMaskingPolicy: with privacy.mode secrets, views show arguments
// but not the values of secret flags; masked says so, and a reveal still
// shows everything.
func TestAPIMaskingPolicy(t *testing.T) {
	pol, err := privacy.NewPolicy(privacy.Rules{Mode: privacy.ModeSecrets, KeepArgv0: true, SecretFlags: []string{"-i"}})
	if err != nil {
		t.Fatal(err)
	}
	old := privacy.Default()
	privacy.SetDefault(pol)
	t.Cleanup(func() { privacy.SetDefault(old) })
	e := newAPIEnv(t, config.API{})

	// ssh -i /tmp/k root@db-1: -i is a secret flag here, root@db-1 is shown.
	r := e.as("vic", "GET", "/api/v1/processes/web-1/300/3000", nil)
	if r.status != http.StatusOK {
		t.Fatalf("process: %d %q", r.status, r.err())
	}
	p, _ := r.body["process"].(map[string]any)
	if p["cmdline"] != "ssh -i [masked] root@db-1" || p["masked"] != true {
		t.Errorf("ssh under the secrets policy: cmdline %q masked %v, want %q true", p["cmdline"], p["masked"], "ssh -i [masked] root@db-1")
	}
	// apache2 -k start: nothing secret, shown whole and not marked masked.
	r = e.as("vic", "GET", "/api/v1/processes/web-1/100/1000", nil)
	if p, _ := r.body["process"].(map[string]any); p["cmdline"] != "apache2 -k start" || p["masked"] != false {
		t.Errorf("apache2: cmdline %q masked %v", p["cmdline"], p["masked"])
	}
	r = e.as("ana", "POST", "/api/v1/reveal", map[string]any{"host": "web-1", "pid": 300, "start": 3000, "reason": "IR-7: which key"})
	if r.status != http.StatusOK || !strings.Contains(r.raw, "/tmp/k") {
		t.Errorf("reveal under the secrets policy: %d %s", r.status, r.raw)
	}
}
