// Package config is the layered configuration of every role: built-in
// defaults, a YAML file, DAEMONEYE_* environment variables and command-line
// flags, in increasing precedence. It records where each value came from so
// that `daemoneye config show` can explain the effective configuration.
//
// The YAML shapes follow the concept's section 13: the example `agent:` and
// `proxy:` snippets load unchanged (testdata/config).
package config

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/privacy"
)

// Config is the whole configuration. One file may hold the sections of several
// roles; each role reads its own.
type Config struct {
	Agent  Agent  `yaml:"agent"`
	Proxy  Proxy  `yaml:"proxy"`
	Center Center `yaml:"center"`
	// Privacy is how command lines are masked wherever an operator sees
	// them, in every role: the agent's local views, the center's API and
	// UI, the SQL sandbox, sinks.
	Privacy Privacy `yaml:"privacy"`
	Log     Log     `yaml:"log"`
}

// Privacy configures masking (privacy.Rules). Revealing always takes a
// permitted role and a justification, whatever the mode.
type Privacy struct {
	// Mode "count" shows argv[0] and how many arguments are masked;
	// "secrets" shows arguments but masks secret values (the values of
	// SecretFlags and what SecretPatterns match, besides built-in ones).
	Mode      string `yaml:"mode"`
	KeepArgv0 bool   `yaml:"keep_argv0"`
	// SecretFlags are flags whose value is masked (--flag VALUE or
	// --flag=VALUE), added to the built-in list (--password, --token, ...).
	SecretFlags []string `yaml:"secret_flags"`
	// SecretPatterns are regular expressions masked inside any argument:
	// the capture group if there is one, else the whole match.
	SecretPatterns []string `yaml:"secret_patterns"`
}

// Rules converts the section for privacy.NewPolicy.
func (p Privacy) Rules() privacy.Rules {
	return privacy.Rules{Mode: p.Mode, KeepArgv0: p.KeepArgv0, SecretFlags: p.SecretFlags, SecretPatterns: p.SecretPatterns}
}

// TLS names the node's certificate, key and the customer CA.
type TLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
	CA   string `yaml:"ca"`
	// CRL is where the node keeps the last revocation list it accepted
	// (pushed down the tree); empty means crl.pem in its data directory.
	CRL string `yaml:"crl"`
	// RenewCheckMS is how often the node checks whether its certificate
	// needs renewing (it renews through the tree with a third of its life left).
	RenewCheckMS int `yaml:"renew_check_ms"`
}

// Agent configures the host agent.
type Agent struct {
	ID            string   `yaml:"id"` // defaults to the host name
	ProxyHint     string   `yaml:"proxy_hint"`
	ProxyFallback []string `yaml:"proxy_fallback"`
	// RetryPrimaryMS is how often an agent on a fallback proxy tries its
	// primary again.
	RetryPrimaryMS int        `yaml:"retry_primary_ms"`
	SiteTag        string     `yaml:"site_tag"`
	DataDir        string     `yaml:"data_dir"`
	Capture        string     `yaml:"capture"` // auto, ebpf or proc
	Standalone     bool       `yaml:"standalone"`
	TLS            TLS        `yaml:"tls"`
	Stream         Stream     `yaml:"stream"`
	Trace          Trace      `yaml:"trace"`
	Baseline       Baseline   `yaml:"baseline"`
	Retention      Retain     `yaml:"retention"`
	Metrics        Metrics    `yaml:"metrics"`
	Rules          AgentRules `yaml:"rules"`

	// Scope limits the agent to one host's processes when the machine runs
	// several: "" for the whole machine, "netns:PATH" (a network namespace
	// file, /run/netns/NAME), "pidns:PATH" (/proc/PID/ns/pid) or
	// "cgroup:PATH" (a cgroup v2 directory and its descendants). The file
	// must exist when the agent starts.
	Scope string `yaml:"scope"`
	// Version is the build's, set by the command line for the fleet
	// registry (not a configuration key).
	Version string `yaml:"-"`
}

// AgentRules are the rules the agent runs over its own events: those of
// its packs marked runs_on agent. Packs are verified as at the center.
type AgentRules struct {
	Enabled       bool     `yaml:"enabled"`
	Default       bool     `yaml:"default"`        // the built-in pack
	Packs         []string `yaml:"packs"`          // pack files; PACK.sig beside each
	TrustedKeys   []string `yaml:"trusted_keys"`   // public keys (rules keygen) that may sign packs
	AllowUnsigned bool     `yaml:"allow_unsigned"` // load unsigned packs (refused by default)
}

// Stream cuts events into batches for the uplink.
type Stream struct {
	BatchMaxEvents int `yaml:"batch_max_events"`
	BatchMaxMS     int `yaml:"batch_max_ms"`
	// MaxQueueBytes bounds the uplink WAL: above it the oldest bulk batches
	// are dropped (counted); trace and alert are never dropped.
	MaxQueueBytes   ByteSize `yaml:"max_queue_bytes"`
	FsyncIntervalMS int      `yaml:"fsync_interval_ms"`
}

// Trace holds focused-trace defaults and the agent's own ceiling on what
// a TraceCommand may ask (the smaller of the command's cap and this wins).
type Trace struct {
	DefaultDepth    int  `yaml:"default_depth"`
	PrivacyMaskArgs bool `yaml:"privacy_mask_args"`
	// MaxEventsPerSec (per trace) and AgentEventsPerSec (all traces
	// together): over them a trace is sampled and the drops are counted.
	MaxEventsPerSec   int           `yaml:"max_events_per_sec"`
	AgentEventsPerSec int           `yaml:"agent_events_per_sec"`
	MaxBytes          ByteSize      `yaml:"max_bytes"`
	MaxDuration       time.Duration `yaml:"max_duration"`
	// MemSnippets allows commands to collect the first bytes of each traced
	// executable's first mapping, up to MemSnippetBytes. Off by default.
	MemSnippets     bool `yaml:"mem_snippets"`
	MemSnippetBytes int  `yaml:"mem_snippet_bytes"`
	// MaxCommandAge is how old a command's operator timestamp may be when
	// it arrives (approvals under the two-person rule take time).
	MaxCommandAge time.Duration `yaml:"max_command_age"`
	// AcceptCenterSigned lets the agent run a start the center signed on
	// behalf of an operator without an operator key (a local account). Off:
	// the operator's own signature proves who asked.
	AcceptCenterSigned bool `yaml:"accept_center_signed"`
}

// Baseline caps the passive baseline so it never hurts the host.
type Baseline struct {
	MaxEventsPerSec int      `yaml:"max_events_per_sec"` // excess is counted and dropped
	ArgvMaxBytes    int      `yaml:"argv_max_bytes"`
	RingBytes       ByteSize `yaml:"ring_bytes"`   // eBPF ring buffer
	QueueEvents     int      `yaml:"queue_events"` // sensor -> store queue bound
	ProcRoot        string   `yaml:"proc_root"`
}

// Retain bounds the local store.
type Retain struct {
	MaxAge    time.Duration `yaml:"max_age"`
	MaxBytes  ByteSize      `yaml:"max_bytes"`
	ExitedAge time.Duration `yaml:"exited_age"` // how long exited processes stay in the table
}

// Metrics is the health listener (Prometheus text format); loopback by default.
type Metrics struct {
	Listen string `yaml:"listen"`
}

// Proxy configures a store-and-forward node.
type Proxy struct {
	Listen           string   `yaml:"listen"`
	Upstream         string   `yaml:"upstream"`
	UpstreamFallback []string `yaml:"upstream_fallback"`
	RetryPrimaryMS   int      `yaml:"retry_primary_ms"`
	WALPath          string   `yaml:"wal_path"`
	FsyncIntervalMS  int      `yaml:"fsync_interval_ms"`
	Flow             Flow     `yaml:"flow"`
	TLS              TLS      `yaml:"tls"`
	Metrics          Metrics  `yaml:"metrics"`
	// Watermarks are fractions of the WAL's filesystem in use: above High
	// bulk is refused (children keep it), below Low it is accepted again.
	Watermarks Watermarks `yaml:"watermarks"`
	// Version is the build's, set by the command line (not a key).
	Version string `yaml:"-"`
}

// Watermarks bound a WAL's disk use.
type Watermarks struct {
	High float64 `yaml:"high"`
	Low  float64 `yaml:"low"`
}

// Flow sets lane priorities and compression on a link.
type Flow struct {
	Priorities  []string `yaml:"priorities"`
	Compression string   `yaml:"compression"`
}

// Center configures the Security Center.
type Center struct {
	Listen  string `yaml:"listen"`
	DataDir string `yaml:"data_dir"`
	// CADir is the customer CA directory (`daemoneye pki init`); when set,
	// the center pushes its CRL down the tree as it changes.
	CADir string `yaml:"ca_dir"`
	// API is the operators' HTTPS API (and later the UI), with client
	// certificates from the customer CA or local accounts.
	API API `yaml:"api"`
	// Rules are the SQL rule packs the center runs.
	Rules   Rules   `yaml:"rules"`
	Traces  Traces  `yaml:"traces"`
	TLS     TLS     `yaml:"tls"`
	Metrics Metrics `yaml:"metrics"`
	// Sinks are export destinations (none by default: with none the center
	// opens no outbound connection). A configured sink stays off until an
	// admin's request to enable it is approved by a second operator.
	Sinks []Sink `yaml:"sinks"`
	// Retention is how long events are kept, per site (retention.go).
	Retention Retention `yaml:"retention"`
	// SQLQueueEvents bounds the decoded events held in memory for the SQL
	// store (about 1 KiB each); past it, stored batches wait in the batch
	// store and the SQL ingester reads them back (262144 by default).
	SQLQueueEvents int `yaml:"sql_queue_events"`
}

// DefaultSQLQueueEvents is center.sql_queue_events by default.
const DefaultSQLQueueEvents = 256 << 10

// Sink is one export destination for what the center records (alerts,
// trace summaries and trace events), always masked, one way.
type Sink struct {
	Name string `yaml:"name"` // unique; names the approval and the counters
	Type string `yaml:"type"` // kafka, splunk_hec, elastic, syslog
	// Kafka: seed brokers and topic.
	Brokers []string `yaml:"brokers"`
	Topic   string   `yaml:"topic"`
	// Splunk HEC (https://host:8088) and Elastic (https://host:9200).
	URL   string `yaml:"url"`
	Index string `yaml:"index"` // Splunk index; Elastic index prefix (PREFIX-alert, ...)
	// TokenFile holds the HEC token or the Elastic API key (read when the
	// sink starts; never logged, not part of the approved digest).
	TokenFile string `yaml:"token_file"`
	// Syslog: host:port of an RFC 5425 (TLS) receiver.
	Address string  `yaml:"address"`
	TLS     SinkTLS `yaml:"tls"`
	// Records limits what goes out: alert, trace, trace_event (all when empty).
	Records []string `yaml:"records"`
	// QueueRecords bounds the in-memory queue; when full, new records are
	// dropped and counted (ingest never waits for a sink).
	QueueRecords int `yaml:"queue_records"`
	BatchRecords int `yaml:"batch_records"`
	// MaxAttempts is how often a batch is tried (with backoff) before it is
	// counted as failed and dropped.
	MaxAttempts int `yaml:"max_attempts"`
}

// SinkTLS is the client side of a sink's TLS. Kafka may be plaintext only
// when Plaintext says so; HTTP sinks need an https URL; syslog is TLS only.
type SinkTLS struct {
	CA         string `yaml:"ca"`   // PEM roots; empty: the system's
	Cert       string `yaml:"cert"` // client certificate (mutual TLS), optional
	Key        string `yaml:"key"`
	ServerName string `yaml:"server_name"`
	Plaintext  bool   `yaml:"plaintext"` // kafka only
}

// Traces configures how the center runs focused traces across hosts.
type Traces struct {
	// AutoFollow fans a trace out to another enrolled host as soon as a
	// traced process connects to it and the accepting process is known
	// (the same trace_id, rooted at the accepting process). Off: an
	// analyst follows a link through the API.
	AutoFollow bool `yaml:"auto_follow"`
	// FollowDepth is the depth of a fan-out trace below the accepting
	// process (an sshd forks twice before the shell).
	FollowDepth int `yaml:"follow_depth"`
}

// Rules configures SQL rule packs: the built-in default pack and packs
// signed with a customer key (`daemoneye rules sign`).
type Rules struct {
	Default       bool     `yaml:"default"`        // load the built-in pack
	Packs         []string `yaml:"packs"`          // pack files; PACK.sig beside each
	TrustedKeys   []string `yaml:"trusted_keys"`   // public keys (rules keygen) that may sign packs
	AllowUnsigned bool     `yaml:"allow_unsigned"` // load unsigned packs (refused by default)
	// TracePolicy decides what a rule's request for a trace does: "auto"
	// starts it at once, "approval" waits for an approver, "off" records
	// the request only.
	TracePolicy string `yaml:"trace_policy"`
}

// API configures the center's HTTPS API.
type API struct {
	Listen string `yaml:"listen"`
	// TwoPersonTraces requires a second operator's approval before a trace
	// starts (the two-person rule).
	TwoPersonTraces bool `yaml:"two_person_traces"`
	// QueryMaxRows and QueryTimeoutMS bound the read-only SQL sandbox.
	QueryMaxRows   int `yaml:"query_max_rows"`
	QueryTimeoutMS int `yaml:"query_timeout_ms"`
	// TLS is the certificate the API (and the web UI) presents.
	TLS APITLS `yaml:"tls"`
}

// APITLS is the API's server certificate. Browsers refuse Ed25519, so it is
// an ECDSA chain from the customer's web CA (`daemoneye pki issue --role
// api`). With Cert and Key empty, a center holding the CA (ca_dir) with a
// web CA issues itself one (DATA_DIR/api.crt, renewed before it expires)
// for the listen address, the host name and Names; without a web CA it
// presents its node certificate, which scripts accept and browsers do not.
type APITLS struct {
	Cert string `yaml:"cert"` // PEM: the certificate, then its chain (the web CA's cross certificate)
	Key  string `yaml:"key"`
	// Names are extra DNS names and IP addresses browsers reach the API by,
	// for the certificate the center issues itself.
	Names []string `yaml:"names"`
}

// Log configures the process's structured log.
type Log struct {
	Level  string `yaml:"level"`  // debug, info, warn, error
	Format string `yaml:"format"` // text or json
}

// Default returns the built-in defaults.
func Default() Config {
	host, _ := os.Hostname()
	return Config{
		Agent: Agent{
			ID:             host,
			RetryPrimaryMS: 10000,
			DataDir:        "/var/lib/daemoneye/agent",
			Capture:        "auto",
			Stream:         Stream{BatchMaxEvents: 2000, BatchMaxMS: 250, MaxQueueBytes: 256 << 20, FsyncIntervalMS: 100},
			Trace: Trace{DefaultDepth: 6, PrivacyMaskArgs: true, MaxEventsPerSec: 5000, AgentEventsPerSec: 20000,
				MaxBytes: 256 << 20, MaxDuration: 24 * time.Hour, MemSnippetBytes: 256, MaxCommandAge: 24 * time.Hour},
			Baseline: Baseline{
				MaxEventsPerSec: 50000,
				ArgvMaxBytes:    4096,
				RingBytes:       8 << 20,
				QueueEvents:     65536,
				ProcRoot:        "/proc",
			},
			Retention: Retain{MaxAge: 7 * 24 * time.Hour, MaxBytes: 1 << 30, ExitedAge: time.Hour},
			TLS:       TLS{RenewCheckMS: 60000},
			Metrics:   Metrics{Listen: "127.0.0.1:9464"},
			Rules:     AgentRules{Enabled: true, Default: true},
		},
		Proxy: Proxy{
			Listen:          "0.0.0.0:7443",
			RetryPrimaryMS:  10000,
			WALPath:         "/var/lib/daemoneye/proxy/wal",
			FsyncIntervalMS: 100,
			Flow:            Flow{Priorities: []string{"trace", "alert", "bulk"}, Compression: "zstd"},
			Metrics:         Metrics{Listen: "127.0.0.1:9465"},
			Watermarks:      Watermarks{High: 0.90, Low: 0.85},
			TLS:             TLS{RenewCheckMS: 60000},
		},
		Center: Center{
			Listen:  "0.0.0.0:7443",
			DataDir: "/var/lib/daemoneye/center",
			API:     API{Listen: "127.0.0.1:8443", TwoPersonTraces: true, QueryMaxRows: 10000, QueryTimeoutMS: 5000},
			Rules:   Rules{Default: true, TracePolicy: "approval"},
			Traces:  Traces{AutoFollow: true, FollowDepth: 6},
			Metrics: Metrics{Listen: "127.0.0.1:9466"},

			Retention:      Retention{Window: Period(90 * 24 * time.Hour), Every: Period(time.Hour), KeepOpenTraces: true},
			SQLQueueEvents: DefaultSQLQueueEvents,
		},
		Privacy: Privacy{Mode: privacy.ModeCount, KeepArgv0: true},
		Log:     Log{Level: "info", Format: "text"},
	}
}

// Validate reports the first value that cannot work.
func (c *Config) Validate() error {
	var errs []string
	switch c.Agent.Capture {
	case "auto", "ebpf", "proc":
	default:
		errs = append(errs, fmt.Sprintf("agent.capture: %q is not one of auto, ebpf, proc", c.Agent.Capture))
	}
	positive := map[string]int{
		"agent.stream.batch_max_events":     c.Agent.Stream.BatchMaxEvents,
		"agent.stream.batch_max_ms":         c.Agent.Stream.BatchMaxMS,
		"agent.baseline.argv_max_bytes":     c.Agent.Baseline.ArgvMaxBytes,
		"agent.baseline.queue_events":       c.Agent.Baseline.QueueEvents,
		"agent.baseline.max_events_per_sec": c.Agent.Baseline.MaxEventsPerSec,
		"proxy.fsync_interval_ms":           c.Proxy.FsyncIntervalMS,
	}
	for _, k := range sortedKeys(positive) {
		if positive[k] <= 0 {
			errs = append(errs, fmt.Sprintf("%s: must be positive, got %d", k, positive[k]))
		}
	}
	if t := c.Agent.Trace; t.MaxEventsPerSec < 0 || t.AgentEventsPerSec < 0 || t.MaxDuration < 0 || t.MemSnippetBytes < 0 || t.MaxCommandAge < 0 {
		errs = append(errs, "agent.trace: caps must not be negative")
	}
	if d := c.Center.Traces.FollowDepth; d < 0 || d > 64 {
		errs = append(errs, fmt.Sprintf("center.traces.follow_depth: want 0 to 64, got %d", d))
	}
	switch c.Center.Rules.TracePolicy {
	case "auto", "approval", "off":
	default:
		errs = append(errs, fmt.Sprintf("center.rules.trace_policy: want auto, approval or off, got %q", c.Center.Rules.TracePolicy))
	}
	if t := c.Center.API.TLS; (t.Cert == "") != (t.Key == "") {
		errs = append(errs, "center.api.tls: set both cert and key, or neither (the center then issues its own from the web CA)")
	}
	errs = append(errs, checkSinks(c.Center.Sinks)...)
	if _, err := privacy.NewPolicy(c.Privacy.Rules()); err != nil {
		errs = append(errs, err.Error())
	}
	errs = append(errs, checkRetention(c.Center.Retention)...)
	if c.Center.SQLQueueEvents < 1 {
		errs = append(errs, fmt.Sprintf("center.sql_queue_events: %d: want at least 1", c.Center.SQLQueueEvents))
	}
	if err := checkScope(c.Agent.Scope); err != nil {
		errs = append(errs, "agent.scope: "+err.Error())
	}
	if c.Agent.Trace.DefaultDepth < 0 {
		errs = append(errs, fmt.Sprintf("agent.trace.default_depth: must not be negative, got %d", c.Agent.Trace.DefaultDepth))
	}
	if rb := int64(c.Agent.Baseline.RingBytes); rb < 4096 || rb&(rb-1) != 0 {
		errs = append(errs, fmt.Sprintf("agent.baseline.ring_bytes: must be a power of two of at least 4KiB, got %s", c.Agent.Baseline.RingBytes))
	}
	for _, p := range c.Proxy.Flow.Priorities {
		switch p {
		case "trace", "alert", "bulk":
		default:
			errs = append(errs, fmt.Sprintf("proxy.flow.priorities: unknown lane %q (want trace, alert, bulk)", p))
		}
	}
	if w := c.Proxy.Watermarks; w.High <= 0 || w.High > 1 || w.Low <= 0 || w.Low >= w.High {
		errs = append(errs, fmt.Sprintf("proxy.watermarks: want 0 < low < high <= 1, got low %v high %v", w.Low, w.High))
	}
	switch c.Proxy.Flow.Compression {
	case "zstd", "none":
	default:
		errs = append(errs, fmt.Sprintf("proxy.flow.compression: %q is not one of zstd, none", c.Proxy.Flow.Compression))
	}
	switch c.Log.Level {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, fmt.Sprintf("log.level: %q is not one of debug, info, warn, error", c.Log.Level))
	}
	switch c.Log.Format {
	case "text", "json":
	default:
		errs = append(errs, fmt.Sprintf("log.format: %q is not one of text, json", c.Log.Format))
	}
	if len(errs) > 0 {
		return fmt.Errorf("invalid configuration:\n  %s", strings.Join(errs, "\n  "))
	}
	return nil
}

// checkScope checks the syntax of agent.scope; whether the file is a
// namespace or a cgroup is checked by the agent when it starts
// (capture.ParseScope), since the file may only exist on the agent's host.
func checkScope(s string) error {
	if s == "" {
		return nil
	}
	for _, p := range []string{"netns:", "pidns:", "cgroup:"} {
		if path, ok := strings.CutPrefix(s, p); ok {
			if !strings.HasPrefix(path, "/") {
				return fmt.Errorf("%q: the path after %q must be absolute", s, p)
			}
			return nil
		}
	}
	return fmt.Errorf("%q is not one of netns:PATH, pidns:PATH, cgroup:PATH (or empty for the whole machine)", s)
}
