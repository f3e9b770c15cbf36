package config

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

func fixedDefaults() Config {
	c := Default()
	c.Agent.ID = "test-host"
	return c
}

func writeFile(t *testing.T, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "daemoneye.yaml")
	if err := os.WriteFile(p, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// The concept's section 13 snippets must load unchanged.
func TestConceptExamplesLoad(t *testing.T) {
	a, err := Load(Sources{File: "../testdata/config/agent.yaml", Base: fixedDefaults})
	if err != nil {
		t.Fatalf("agent example: %v", err)
	}
	if got, want := a.Config.Agent.ProxyHint, "px-us-east-1a.local:7443"; got != want {
		t.Errorf("agent.proxy_hint = %q, want %q", got, want)
	}
	if got, want := a.Config.Agent.Stream.BatchMaxEvents, 2000; got != want {
		t.Errorf("batch_max_events = %d, want %d", got, want)
	}
	if got, want := a.Config.Agent.TLS.CA, "/etc/daemoneye/ca.pem"; got != want {
		t.Errorf("tls.ca = %q, want %q", got, want)
	}
	if o := a.Origins["agent.site_tag"]; o.Layer != LayerFile || !strings.HasSuffix(o.Where, "agent.yaml:3") {
		t.Errorf("origin of agent.site_tag = %v, want file agent.yaml:3", o)
	}
	if o := a.Origins["agent.capture"]; o.Layer != LayerDefault {
		t.Errorf("origin of agent.capture = %v, want default", o)
	}

	p, err := Load(Sources{File: "../testdata/config/proxy.yaml", Base: fixedDefaults})
	if err != nil {
		t.Fatalf("proxy example: %v", err)
	}
	if got, want := strings.Join(p.Config.Proxy.Flow.Priorities, ","), "trace,alert,bulk"; got != want {
		t.Errorf("flow.priorities = %q, want %q", got, want)
	}
	if got, want := p.Config.Proxy.FsyncIntervalMS, 100; got != want {
		t.Errorf("fsync_interval_ms = %d, want %d", got, want)
	}
}

func TestUnknownKeyNamesKeyAndLine(t *testing.T) {
	cases := []struct {
		name, body, want string
	}{
		{"top", "agent:\n  site_tag: a\nbogus: 1\n", `:3: unknown configuration key "bogus"`},
		{"nested", "agent:\n  stream:\n    batch_max_events: 5\n    batch_max_bytes: 9\n", `:4: unknown configuration key "agent.stream.batch_max_bytes"`},
		{"typo", "proxy:\n  fsync_intervall_ms: 100\n", `:2: unknown configuration key "proxy.fsync_intervall_ms"`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(Sources{File: writeFile(t, c.body), Base: fixedDefaults})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v, want one containing %q", err, c.want)
			}
			if !errors.Is(err, ErrUnknownKey) {
				t.Errorf("error does not wrap ErrUnknownKey: %v", err)
			}
		})
	}
}

func TestBadValues(t *testing.T) {
	cases := []struct {
		name, body, want string
	}{
		{"type", "agent:\n  stream:\n    batch_max_events: lots\n", ":3: agent.stream.batch_max_events"},
		{"enum", "agent:\n  capture: magic\n", `agent.capture: "magic" is not one of auto, ebpf, proc`},
		{"dup", "agent:\n  site_tag: a\n  site_tag: b\n", `:3: duplicate key "agent.site_tag"`},
		{"notmap", "agent: 5\n", `"agent" must be a mapping`},
		{"size", "agent:\n  baseline:\n    ring_bytes: 3MiB\n", "power of two"},
		{"syntax", "agent:\n  site_tag: [\n", "daemoneye.yaml"},
		{"lane", "proxy:\n  flow:\n    priorities: [trace, urgent]\n", `unknown lane "urgent"`},
		{"scope", "agent:\n  scope: web-1\n", `agent.scope: "web-1" is not one of netns:PATH`},
		{"privacy-mode", "privacy:\n  mode: off\n", `privacy.mode: "off" is not one of count, secrets`},
		{"privacy-pattern", "privacy:\n  mode: secrets\n  secret_patterns: ['(a)(b)']\n", "privacy.secret_patterns[0]: \"(a)(b)\" has 2 capture groups"},
		{"scope-relative", "agent:\n  scope: netns:web-1\n", `agent.scope: "netns:web-1": the path after "netns:" must be absolute`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(Sources{File: writeFile(t, c.body), Base: fixedDefaults})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v, want one containing %q", err, c.want)
			}
		})
	}
}

func TestPrecedence(t *testing.T) {
	file := writeFile(t, "agent:\n  capture: proc\n  site_tag: from-file\n  stream:\n    batch_max_ms: 100\n  retention:\n    max_age: 48h\n")
	env := []string{
		"DAEMONEYE_AGENT_CAPTURE=ebpf",
		"DAEMONEYE_AGENT_STREAM_BATCH_MAX_MS=50",
		"DAEMONEYE_AGENT_BASELINE_RING_BYTES=16MiB",
		"UNRELATED=1",
	}
	flags := []Flag{{Key: "agent.capture", Value: "auto", Name: "--capture"}}
	l, err := Load(Sources{File: file, Environ: env, Flags: flags, Base: fixedDefaults})
	if err != nil {
		t.Fatal(err)
	}
	c := l.Config.Agent
	checks := []struct {
		key, got, want string
		layer          Layer
	}{
		{"agent.capture", c.Capture, "auto", LayerFlag},
		{"agent.stream.batch_max_ms", itoa(c.Stream.BatchMaxMS), "50", LayerEnv},
		{"agent.site_tag", c.SiteTag, "from-file", LayerFile},
		{"agent.retention.max_age", c.Retention.MaxAge.String(), (48 * time.Hour).String(), LayerFile},
		{"agent.baseline.ring_bytes", c.Baseline.RingBytes.String(), "16MiB", LayerEnv},
		{"agent.stream.batch_max_events", itoa(c.Stream.BatchMaxEvents), "2000", LayerDefault},
	}
	for _, ch := range checks {
		if ch.got != ch.want {
			t.Errorf("%s = %s, want %s", ch.key, ch.got, ch.want)
		}
		if o := l.Origins[ch.key]; o.Layer != ch.layer {
			t.Errorf("%s came from %v, want %s", ch.key, o, ch.layer)
		}
	}

	var buf bytes.Buffer
	if err := l.Show(&buf, "agent"); err != nil {
		t.Fatal(err)
	}
	out := buf.String()
	for _, want := range []string{
		`agent.capture = "auto"`, "# flag (--capture)",
		"agent.stream.batch_max_ms = 50", "# env (DAEMONEYE_AGENT_STREAM_BATCH_MAX_MS)",
		"agent.site_tag = \"from-file\"", "daemoneye.yaml:3)",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("config show lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "proxy.") {
		t.Errorf("config show agent printed proxy keys:\n%s", out)
	}
}

func TestBadEnvAndFlag(t *testing.T) {
	_, err := Load(Sources{Environ: []string{"DAEMONEYE_AGENT_STREAM_BATCH_MAX_EVENTS=many"}, Base: fixedDefaults})
	if err == nil || !strings.Contains(err.Error(), "DAEMONEYE_AGENT_STREAM_BATCH_MAX_EVENTS") {
		t.Errorf("bad env value: error = %v, want it to name the variable", err)
	}
	_, err = Load(Sources{Flags: []Flag{{Key: "agent.nope", Value: "1", Name: "--set"}}, Base: fixedDefaults})
	if !errors.Is(err, ErrUnknownKey) {
		t.Errorf("unknown flag key: error = %v, want ErrUnknownKey", err)
	}
}

func TestByteSize(t *testing.T) {
	for in, want := range map[string]ByteSize{"4096": 4096, "8MiB": 8 << 20, "1 GiB": 1 << 30, "2KB": 2000} {
		got, err := ParseByteSize(in)
		if err != nil || got != want {
			t.Errorf("ParseByteSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "MiB", "-1", "1.5GiB", "99999999999TiB"} {
		if _, err := ParseByteSize(bad); err == nil {
			t.Errorf("ParseByteSize(%q) succeeded, want error", bad)
		}
	}
	if got := ByteSize(8 << 20).String(); got != "8MiB" {
		t.Errorf("String = %q, want 8MiB", got)
	}
}

func itoa(n int) string { return strconv.Itoa(n) }

func TestScopeKey(t *testing.T) {
	file := writeFile(t, "agent:\n  scope: netns:/run/netns/web-1\n")
	l, err := Load(Sources{File: file, Base: fixedDefaults})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Config.Agent.Scope; got != "netns:/run/netns/web-1" {
		t.Errorf("agent.scope = %q, want netns:/run/netns/web-1", got)
	}
	if o := l.Origins["agent.scope"]; o.Layer != LayerFile {
		t.Errorf("agent.scope came from %v, want the file", o)
	}
	l, err = Load(Sources{File: file, Environ: []string{"DAEMONEYE_AGENT_SCOPE=cgroup:/sys/fs/cgroup/db"}, Base: fixedDefaults})
	if err != nil {
		t.Fatal(err)
	}
	if got, o := l.Config.Agent.Scope, l.Origins["agent.scope"]; got != "cgroup:/sys/fs/cgroup/db" || o.Layer != LayerEnv {
		t.Errorf("agent.scope = %q from %v, want cgroup:/sys/fs/cgroup/db from the environment", got, o)
	}
	l, err = Load(Sources{Base: fixedDefaults})
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Config.Agent.Scope; got != "" {
		t.Errorf("default agent.scope = %q, want \"\" (the whole machine)", got)
	}
}
