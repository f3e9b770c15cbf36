package cli

import (
	"bytes"
	"context"
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestRoleArgs(t *testing.T) {
	cases := []struct {
		in, want []string
	}{
		{[]string{"daemoneye", "agent", "--standalone"}, []string{"daemoneye", "agent", "--standalone"}},
		{[]string{"/usr/bin/daemoneye-agent", "--standalone"}, []string{"/usr/bin/daemoneye-agent", "agent", "--standalone"}},
		{[]string{"daemoneye", "--role", "proxy", "-c", "x.yaml"}, []string{"daemoneye", "proxy", "-c", "x.yaml"}},
		{[]string{"daemoneye", "-c", "x.yaml", "--role=center"}, []string{"daemoneye", "center", "-c", "x.yaml"}},
		{[]string{"daemoneye", "--role", "toaster"}, []string{"daemoneye", "--role", "toaster"}},
		{[]string{"daemoneye-agent", "ps", "--tree"}, []string{"daemoneye-agent", "agent", "ps", "--tree"}},
		{[]string{"daemoneye", "config", "show"}, []string{"daemoneye", "config", "show"}},
		{[]string{"daemoneye", "pki", "issue", "--role", "agent", "web-1"}, []string{"daemoneye", "pki", "issue", "--role", "agent", "web-1"}},
		{[]string{"daemoneye", "--set", "a=b", "--role", "agent"}, []string{"daemoneye", "agent", "--set", "a=b"}},
	}
	for _, c := range cases {
		if got := RoleArgs(c.in); !reflect.DeepEqual(got, c.want) {
			t.Errorf("RoleArgs(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}

func run(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	code := Main(context.Background(), append([]string{"daemoneye"}, args...), Build{"1.2.3", "abc123", "2026-11-24"}, &out, &errb, env)
	return code, out.String(), errb.String()
}

func TestVersion(t *testing.T) {
	code, out, _ := run(t, nil, "--version")
	if code != 0 || !strings.Contains(out, "daemoneye 1.2.3 (commit abc123, built 2026-11-24)") {
		t.Errorf("--version: code %d, output %q", code, out)
	}
}

func TestConfigShowLayers(t *testing.T) {
	env := []string{"DAEMONEYE_AGENT_STREAM_BATCH_MAX_MS=77"}
	code, out, errs := run(t, env, "config", "show", "agent", "-c", "../testdata/config/agent.yaml", "--set", "agent.capture=proc")
	if code != 0 {
		t.Fatalf("config show: code %d, stderr %s", code, errs)
	}
	for _, want := range []string{
		`agent.capture = "proc"`, "flag (--set agent.capture)",
		"agent.stream.batch_max_ms = 77", "env (DAEMONEYE_AGENT_STREAM_BATCH_MAX_MS)",
		`agent.proxy_hint = "px-us-east-1a.local:7443"`, "agent.yaml:2",
		"agent.baseline.argv_max_bytes = 4096", "# default",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
}

func TestBadInputExitCodes(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"config", "show", "-c", "does-not-exist.yaml"}, "no such file"},
		{[]string{"config", "show", "--set", "agent.nokey=1"}, `unknown configuration key "agent.nokey"`},
		{[]string{"config", "show", "--set", "novalue"}, "want KEY=VALUE"},
		{[]string{"agent", "--capture", "magic"}, "must be one of"},
		{[]string{"agent", "lineage", "1", "--reveal"}, "needs a reason"},
		{[]string{"nosuchverb"}, "unexpected argument"},
	}
	for _, c := range cases {
		code, _, errs := run(t, nil, c.args...)
		if code == 0 || !strings.Contains(errs, c.want) {
			t.Errorf("%q: code %d, stderr %q; want non-zero and %q", c.args, code, errs, c.want)
		}
	}
}

func TestPKIVerbs(t *testing.T) {
	dir := t.TempDir() + "/pki"
	if code, out, errs := run(t, nil, "pki", "--dir", dir, "init", "--org", "ACME"); code != 0 || !strings.Contains(out, "created CA") {
		t.Fatalf("pki init: %d %s %s", code, out, errs)
	}
	if code, _, errs := run(t, nil, "pki", "--dir", dir, "init"); code == 0 || !strings.Contains(errs, "exists") {
		t.Errorf("second pki init: code %d, %s; want a refusal to overwrite", code, errs)
	}
	code, out, errs := run(t, nil, "pki", "--dir", dir, "issue", "--role", "agent", "web-1", "--loopback")
	if code != 0 || !strings.Contains(out, "issued agent/web-1 serial ") {
		t.Fatalf("pki issue: %d %s %s", code, out, errs)
	}
	if st, err := os.Stat(dir + "/web-1.key"); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("key file mode = %v, %v; want 0600", st.Mode().Perm(), err)
	}
	if code, _, errs := run(t, nil, "pki", "--dir", dir, "issue", "--role", "agent", "../etc"); code == 0 {
		t.Errorf("issue with a path in the name succeeded: %s", errs)
	}
	if code, _, errs := run(t, nil, "pki", "--dir", dir, "revoke", "--cert", dir+"/web-1.crt"); code == 0 || !strings.Contains(errs, "not revoked") {
		t.Errorf("revoke without --yes and no terminal: code %d %s", code, errs)
	}
	code, out, errs = run(t, nil, "pki", "--dir", dir, "revoke", "--cert", dir+"/web-1.crt", "--yes", "--reason", "1")
	if code != 0 || !strings.Contains(out, "lists 1 certificate") {
		t.Errorf("revoke: %d %s %s", code, out, errs)
	}
}
