package rules

import (
	"crypto/ed25519"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"
)

// FormatVersion is the newest pack format this binary reads.
const FormatVersion = 1

// MaxPackBytes bounds a pack file: packs are small, and the parser walks
// every node.
const MaxPackBytes = 4 << 20

// Pack is a parsed rule pack.
type Pack struct {
	Format      int
	Name        string
	Version     string
	Description string
	Rules       []Rule

	// Source names the file (or "builtin:default") for messages.
	Source string
	// Raw is the exact bytes parsed: what the signature covers and what
	// the center sends down to agents.
	Raw []byte
	// Signer is the key that verified the pack's signature (nil when the
	// pack was accepted unsigned, or is the built-in pack).
	// Sig is the detached signature read with the pack (nil: none), as
	// Open was given it: what a node passes on with Raw.
	Sig    []byte
	Signer ed25519.PublicKey
	// SignatureProblem says why a pack accepted with allowUnsigned was not
	// verified ("" for a verified or built-in pack).
	SignatureProblem string
}

// Rule is one detection.
type Rule struct {
	ID          string
	Title       string
	Description string
	Severity    Severity
	Attack      string // ATT&CK technique, e.g. T1059.004
	RunsOn      Target
	SQL         string
	Action      Action
	Fixtures    []Fixture

	Line    int // where the rule starts in the pack file
	SQLLine int // where its sql value starts
}

// Severity of a rule's alerts; the alerts table's values.
type Severity string

const (
	SeverityInfo     Severity = "info"
	SeverityLow      Severity = "low"
	SeverityMedium   Severity = "medium"
	SeverityHigh     Severity = "high"
	SeverityCritical Severity = "critical"
)

var severities = []Severity{SeverityInfo, SeverityLow, SeverityMedium, SeverityHigh, SeverityCritical}

// Target says where a rule runs: a bit set.
type Target uint8

const (
	Center Target = 1 << iota // on the center, over the SQL store
	Agent                     // on the agent, over its local window (AgentEngine)
)

func (t Target) String() string {
	var s []string
	if t&Center != 0 {
		s = append(s, "center")
	}
	if t&Agent != 0 {
		s = append(s, "agent")
	}
	return strings.Join(s, ",")
}

// Action is what a match does. Every match is an alert; Trace, when set,
// asks the caller to start a focused trace on the matched process.
type Action struct {
	Trace *TraceSpec
}

// TraceSpec is the trace a rule requests.
type TraceSpec struct {
	Depth    int           // descendant depth, 1..MaxTraceDepth
	Duration time.Duration // max duration, 1s..24h
	Collect  Collect
}

// Bounds of a requested trace.
const (
	MaxTraceDepth    = 64
	MaxTraceDuration = 24 * time.Hour
)

// Collect is the set of what a trace collects, with the bit values of the
// traces.flags column (bit 0 command lines, 1 network, 2 file metadata, 3
// memory snippets).
type Collect uint32

const (
	CollectCmdlines Collect = 1 << iota
	CollectNetwork
	CollectFiles
	CollectMemory
)

var collectNames = []struct {
	name string
	bit  Collect
}{{"cmdlines", CollectCmdlines}, {"network", CollectNetwork}, {"files", CollectFiles}, {"memory", CollectMemory}}

func (c Collect) String() string {
	var s []string
	for _, n := range collectNames {
		if c&n.bit != 0 {
			s = append(s, n.name)
		}
	}
	return strings.Join(s, ",")
}

// Fixture is a test case of a rule: rows to insert into a fresh database,
// and the matches expected when the rule runs over them with every cursor
// at 0.
type Fixture struct {
	Name   string
	Tables []FixtureTable // in file order: rows are inserted in this order
	// Count, when not nil, is the number of distinct (host, pid, start)
	// the rule must match.
	Count *int
	// Matches, when not nil, is exactly the set of processes the rule
	// must match.
	Matches []ProcessKey
	Line    int
}

// FixtureTable holds the rows of one table.
type FixtureTable struct {
	Table string
	Rows  []FixtureRow
	Line  int
}

// FixtureRow is one row: column names and values (nil, int64, float64,
// string).
type FixtureRow struct {
	Cols []string
	Vals []any
	Line int
}

// ProcessKey names a process: (host, pid, start), as in every table.
type ProcessKey struct {
	Host  string
	PID   uint32
	Start uint64
}

func (k ProcessKey) String() string { return fmt.Sprintf("%s/%d@%d", k.Host, k.PID, k.Start) }

var (
	idRE     = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	attackRE = regexp.MustCompile(`^T[0-9]{4}(\.[0-9]{3})?$`)
)

// RulesFor returns the rules that run on t.
func (p *Pack) RulesFor(t Target) []Rule {
	var out []Rule
	for _, r := range p.Rules {
		if r.RunsOn&t != 0 {
			out = append(out, r)
		}
	}
	return out
}

// Rule returns the rule with id.
func (p *Pack) Rule(id string) (Rule, bool) {
	i := slices.IndexFunc(p.Rules, func(r Rule) bool { return r.ID == id })
	if i < 0 {
		return Rule{}, false
	}
	return p.Rules[i], true
}
