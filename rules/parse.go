package rules

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"slices"
	"sort"
	"strings"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/evilbitlabs/daemoneye/store/sqlstore"
)

// ErrPack is wrapped by every parse error.
var ErrPack = errors.New("invalid rule pack")

// Problem is one thing wrong with a pack, at a line of its file.
type Problem struct {
	Line int
	Msg  string
}

// ParseError lists every problem found in a pack, in file order.
type ParseError struct {
	Source   string
	Problems []Problem
}

func (e *ParseError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %s:", e.Source, ErrPack)
	for _, p := range e.Problems {
		if p.Line > 0 {
			fmt.Fprintf(&b, "\n  %s:%d: %s", e.Source, p.Line, p.Msg)
		} else {
			fmt.Fprintf(&b, "\n  %s: %s", e.Source, p.Msg)
		}
	}
	return b.String()
}

func (e *ParseError) Unwrap() error { return ErrPack }

// maxNodes bounds the nodes the parser visits, aliases expanded: an alias
// bomb fails instead of running for ever.
const maxNodes = 200_000

type parser struct {
	probs []Problem
	nodes int
}

func (p *parser) errf(n *yaml.Node, format string, args ...any) {
	line := 0
	if n != nil {
		line = n.Line
	}
	p.probs = append(p.probs, Problem{Line: line, Msg: fmt.Sprintf(format, args...)})
}

// Parse parses and structurally validates a pack: strict keys, types,
// required fields, unique ids, well-formed ATT&CK ids and trace actions.
// It does not touch SQL beyond its shape; Check does the rest. source names
// the pack in messages. Errors are a *ParseError with every problem and its
// line.
func Parse(source string, data []byte) (pk *Pack, err error) {
	if len(data) > MaxPackBytes {
		return nil, &ParseError{Source: source, Problems: []Problem{{Msg: fmt.Sprintf("file is %d bytes, more than the %d a pack may have", len(data), MaxPackBytes)}}}
	}
	var doc yaml.Node
	func() {
		// The YAML library is not ours: whatever it does on hostile input,
		// a pack file must not take the process down.
		defer func() {
			if r := recover(); r != nil {
				err = &ParseError{Source: source, Problems: []Problem{{Msg: fmt.Sprintf("yaml: %v", r)}}}
			}
		}()
		if uerr := yaml.Unmarshal(data, &doc); uerr != nil {
			err = &ParseError{Source: source, Problems: []Problem{{Line: yamlErrLine(uerr), Msg: uerr.Error()}}}
		}
	}()
	if err != nil {
		return nil, err
	}
	p := &parser{}
	pk = &Pack{Source: source, Raw: data}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, &ParseError{Source: source, Problems: []Problem{{Msg: "empty file"}}}
	}
	p.pack(doc.Content[0], pk)
	if len(p.probs) > 0 {
		sort.SliceStable(p.probs, func(i, j int) bool { return p.probs[i].Line < p.probs[j].Line })
		return nil, &ParseError{Source: source, Problems: p.probs}
	}
	return pk, nil
}

// yamlErrLine pulls "line N" out of a yaml.v3 error, which has no field
// for it.
func yamlErrLine(err error) int {
	s := err.Error()
	i := strings.Index(s, "line ")
	if i < 0 {
		return 0
	}
	n := 0
	for _, c := range s[i+5:] {
		if c < '0' || c > '9' || n > 1e8 {
			break
		}
		n = n*10 + int(c-'0')
	}
	return n
}

// resolve follows aliases and counts nodes against the budget.
func (p *parser) resolve(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 100; i++ {
		n = n.Alias
	}
	p.nodes++
	if n == nil || n.Kind == yaml.AliasNode {
		return nil
	}
	return n
}

type entry struct {
	key string
	k   *yaml.Node
	v   *yaml.Node
}

// entries returns a mapping's key/value pairs, merge keys (<<) applied,
// with unknown and duplicate keys reported. allowed nil: any key.
func (p *parser) entries(n *yaml.Node, what string, allowed []string) []entry {
	n = p.resolve(n)
	if n == nil {
		return nil
	}
	if n.Kind != yaml.MappingNode {
		p.errf(n, "%s: want a mapping (key: value), got %s", what, kindName(n))
		return nil
	}
	var out []entry
	seen := map[string]*yaml.Node{}
	var merged []entry
	for i := 0; i+1 < len(n.Content); i += 2 {
		if p.nodes > maxNodes {
			p.errf(n, "too many nodes (aliases expand to more than %d)", maxNodes)
			return nil
		}
		k, v := p.resolve(n.Content[i]), n.Content[i+1]
		if k == nil {
			continue
		}
		if k.Kind != yaml.ScalarNode {
			p.errf(k, "%s: keys must be plain strings", what)
			continue
		}
		if k.Value == "<<" && k.Tag == "!!merge" {
			merged = append(merged, p.merge(v, what, allowed)...)
			continue
		}
		if prev, dup := seen[k.Value]; dup {
			p.errf(k, "%s: key %q repeated (first at line %d)", what, k.Value, prev.Line)
			continue
		}
		seen[k.Value] = k
		if allowed != nil && !slices.Contains(allowed, k.Value) {
			if near := nearest(k.Value, allowed); near != "" {
				p.errf(k, "%s: unknown key %q (did you mean %q?)", what, k.Value, near)
			} else {
				p.errf(k, "%s: unknown key %q (allowed: %s)", what, k.Value, strings.Join(allowed, ", "))
			}
			continue
		}
		out = append(out, entry{k.Value, k, v})
	}
	for _, e := range merged {
		if _, ok := seen[e.key]; !ok {
			seen[e.key] = e.k
			out = append(out, e)
		}
	}
	return out
}

// nearest returns the allowed key within two edits of key, if one is.
func nearest(key string, allowed []string) string {
	best, bestD := "", 3
	for _, a := range allowed {
		if d := editDistance(key, a); d < bestD {
			best, bestD = a, d
		}
	}
	return best
}

// editDistance is the Levenshtein distance, for short keys.
func editDistance(a, b string) int {
	if len(a) > 64 || len(b) > 64 {
		return 64
	}
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			c := prev[j-1]
			if a[i-1] != b[j-1] {
				c++
			}
			cur[j] = min(c, prev[j]+1, cur[j-1]+1)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

func (p *parser) merge(v *yaml.Node, what string, allowed []string) []entry {
	v = p.resolve(v)
	if v == nil {
		return nil
	}
	if v.Kind == yaml.SequenceNode {
		var out []entry
		for _, m := range v.Content {
			out = append(out, p.entries(m, what, allowed)...)
		}
		return out
	}
	return p.entries(v, what, allowed)
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "nothing"
}

func (p *parser) str(n *yaml.Node, what string) (string, bool) {
	n = p.resolve(n)
	if n == nil || n.Kind != yaml.ScalarNode || n.ShortTag() == "!!null" {
		p.errf(n, "%s: want a string", what)
		return "", false
	}
	return n.Value, true
}

func (p *parser) integer(n *yaml.Node, what string) (int64, bool) {
	n = p.resolve(n)
	var v int64
	if n == nil || n.Kind != yaml.ScalarNode || n.ShortTag() != "!!int" || n.Decode(&v) != nil {
		p.errf(n, "%s: want an integer", what)
		return 0, false
	}
	return v, true
}

func (p *parser) seq(n *yaml.Node, what string) []*yaml.Node {
	n = p.resolve(n)
	if n == nil {
		return nil
	}
	if n.Kind != yaml.SequenceNode {
		p.errf(n, "%s: want a list, got %s", what, kindName(n))
		return nil
	}
	return n.Content
}

func (p *parser) pack(n *yaml.Node, pk *Pack) {
	required := map[string]bool{"pack": false, "version": false, "rules": false}
	pk.Format = FormatVersion
	for _, e := range p.entries(n, "pack", []string{"format", "pack", "version", "description", "rules"}) {
		required[e.key] = true
		switch e.key {
		case "format":
			if v, ok := p.integer(e.v, "format"); ok {
				if v < 1 || v > FormatVersion {
					p.errf(e.v, "format %d: this binary reads pack format %d", v, FormatVersion)
				}
				pk.Format = int(v)
			}
		case "pack":
			if s, ok := p.str(e.v, "pack"); ok {
				if !idRE.MatchString(s) {
					p.errf(e.v, "pack name %q: want lowercase letters, digits, '.', '_' or '-' (at most 64)", s)
				}
				pk.Name = s
			}
		case "version":
			if s, ok := p.str(e.v, "version"); ok {
				if s == "" || len(s) > 64 {
					p.errf(e.v, "version: want 1 to 64 characters")
				}
				pk.Version = s
			}
		case "description":
			pk.Description, _ = p.str(e.v, "description")
		case "rules":
			items := p.seq(e.v, "rules")
			if len(items) == 0 && e.v != nil {
				p.errf(e.v, "rules: the pack has no rules")
			}
			ids := map[string]int{}
			for _, rn := range items {
				r, ok := p.rule(rn)
				if !ok {
					continue
				}
				if line, dup := ids[r.ID]; dup {
					p.errf(rn, "rule id %q repeated (first at line %d)", r.ID, line)
					continue
				}
				ids[r.ID] = r.Line
				pk.Rules = append(pk.Rules, r)
			}
		}
	}
	for _, k := range []string{"pack", "version", "rules"} {
		if !required[k] {
			p.errf(n, "pack: missing %q", k)
		}
	}
}

var ruleKeys = []string{"id", "title", "description", "severity", "attack", "runs_on", "sql", "action", "fixtures"}

func (p *parser) rule(n *yaml.Node) (Rule, bool) {
	n = p.resolve(n)
	before := len(p.probs)
	r := Rule{RunsOn: Center}
	if n == nil {
		return r, false
	}
	r.Line = n.Line
	// The id first, so that every other message can name the rule.
	what := fmt.Sprintf("rule at line %d", n.Line)
	for i := 0; n.Kind == yaml.MappingNode && i+1 < len(n.Content); i += 2 {
		if k, v := n.Content[i], p.resolve(n.Content[i+1]); k.Value == "id" && v != nil && v.Kind == yaml.ScalarNode {
			what = fmt.Sprintf("rule %q", v.Value)
		}
	}
	es := p.entries(n, what, ruleKeys)
	for _, e := range es {
		if e.key == "id" {
			if s, ok := p.str(e.v, "rule id"); ok {
				if !idRE.MatchString(s) {
					p.errf(e.v, "rule id %q: want lowercase letters, digits, '.', '_' or '-', starting with a letter or digit (at most 64)", s)
				}
				r.ID = s
				what = fmt.Sprintf("rule %q", s)
			}
		}
	}
	have := map[string]bool{}
	for _, e := range es {
		have[e.key] = true
		switch e.key {
		case "title":
			r.Title, _ = p.str(e.v, what+": title")
		case "description":
			r.Description, _ = p.str(e.v, what+": description")
		case "severity":
			if s, ok := p.str(e.v, what+": severity"); ok {
				r.Severity = Severity(s)
				if !slices.Contains(severities, r.Severity) {
					p.errf(e.v, "%s: severity %q: want info, low, medium, high or critical", what, s)
				}
			}
		case "attack":
			if s, ok := p.str(e.v, what+": attack"); ok {
				if !attackRE.MatchString(s) {
					p.errf(e.v, "%s: attack %q: want an ATT&CK technique id like T1059 or T1059.004", what, s)
				}
				r.Attack = s
			}
		case "runs_on":
			r.RunsOn = p.target(e.v, what)
		case "sql":
			if s, ok := p.str(e.v, what+": sql"); ok {
				r.SQL = s
				r.SQLLine = e.v.Line
				if v := p.resolve(e.v); v != nil && v.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0 {
					r.SQLLine++ // the text starts below the | or >
				}
			}
		case "action":
			r.Action = p.action(e.v, what)
		case "fixtures":
			for _, fn := range p.seq(e.v, what+": fixtures") {
				if f, ok := p.fixture(fn, what); ok {
					r.Fixtures = append(r.Fixtures, f)
				}
			}
		}
	}
	for _, k := range []string{"id", "title", "severity", "attack", "sql"} {
		if !have[k] {
			p.errf(n, "%s: missing %q", what, k)
		}
	}
	if r.Title != "" && len(r.Title) > 200 {
		p.errf(n, "%s: title longer than 200 characters", what)
	}
	return r, len(p.probs) == before
}

func (p *parser) target(n *yaml.Node, what string) Target {
	n = p.resolve(n)
	if n == nil {
		return Center
	}
	var names []*yaml.Node
	if n.Kind == yaml.ScalarNode {
		names = []*yaml.Node{n}
	} else {
		names = p.seq(n, what+": runs_on")
	}
	var t Target
	for _, nn := range names {
		s, ok := p.str(nn, what+": runs_on")
		if !ok {
			continue
		}
		switch s {
		case "center":
			t |= Center
		case "agent":
			t |= Agent
		case "both":
			t |= Center | Agent
		default:
			p.errf(nn, "%s: runs_on %q: want center, agent or both", what, s)
		}
	}
	if t == 0 {
		p.errf(n, "%s: runs_on names no place to run", what)
		return Center
	}
	return t
}

func (p *parser) action(n *yaml.Node, what string) Action {
	var a Action
	for _, e := range p.entries(n, what+": action", []string{"alert", "trace"}) {
		switch e.key {
		case "alert":
			v := p.resolve(e.v)
			var b bool
			if v == nil || v.ShortTag() != "!!bool" || v.Decode(&b) != nil {
				p.errf(v, "%s: action.alert: want true or false", what)
			} else if !b {
				p.errf(v, "%s: action.alert: false is not supported: every match of a rule is an alert", what)
			}
		case "trace":
			a.Trace = p.trace(e.v, what)
		}
	}
	return a
}

func (p *parser) trace(n *yaml.Node, what string) *TraceSpec {
	ts := &TraceSpec{}
	have := map[string]bool{}
	for _, e := range p.entries(n, what+": action.trace", []string{"depth", "duration", "collect"}) {
		have[e.key] = true
		switch e.key {
		case "depth":
			if v, ok := p.integer(e.v, what+": trace.depth"); ok {
				if v < 1 || v > MaxTraceDepth {
					p.errf(e.v, "%s: trace.depth %d: want 1 to %d", what, v, MaxTraceDepth)
				}
				ts.Depth = int(v)
			}
		case "duration":
			if s, ok := p.str(e.v, what+": trace.duration"); ok {
				d, err := time.ParseDuration(s)
				if err != nil || d < time.Second || d > MaxTraceDuration {
					p.errf(e.v, "%s: trace.duration %q: want a duration from 1s to 24h, like 15m", what, s)
				}
				ts.Duration = d
			}
		case "collect":
			for _, cn := range p.seq(e.v, what+": trace.collect") {
				s, ok := p.str(cn, what+": trace.collect")
				if !ok {
					continue
				}
				found := false
				for _, c := range collectNames {
					if c.name == s {
						ts.Collect |= c.bit
						found = true
					}
				}
				if !found {
					p.errf(cn, "%s: trace.collect %q: want cmdlines, network, files or memory", what, s)
				}
			}
		}
	}
	for _, k := range []string{"depth", "duration"} {
		if !have[k] {
			p.errf(n, "%s: action.trace: missing %q", what, k)
		}
	}
	return ts
}

func (p *parser) fixture(n *yaml.Node, what string) (Fixture, bool) {
	n = p.resolve(n)
	f := Fixture{}
	if n == nil {
		return f, false
	}
	before := len(p.probs)
	f.Line = n.Line
	have := map[string]bool{}
	for _, e := range p.entries(n, what+": fixture", []string{"name", "rows", "expect"}) {
		have[e.key] = true
		switch e.key {
		case "name":
			f.Name, _ = p.str(e.v, what+": fixture name")
		case "rows":
			for _, te := range p.entries(e.v, what+": fixture rows", nil) {
				ft := FixtureTable{Table: te.key, Line: te.k.Line}
				for _, rn := range p.seq(te.v, fmt.Sprintf("%s: fixture rows of %s", what, te.key)) {
					if row, ok := p.row(rn, what); ok {
						ft.Rows = append(ft.Rows, row)
					}
				}
				f.Tables = append(f.Tables, ft)
			}
		case "expect":
			p.expect(e.v, what, &f)
		}
	}
	if f.Name == "" {
		f.Name = fmt.Sprintf("line %d", f.Line)
	}
	if !have["expect"] {
		p.errf(n, "%s: fixture %q: missing \"expect\"", what, f.Name)
	}
	return f, len(p.probs) == before
}

func (p *parser) expect(n *yaml.Node, what string, f *Fixture) {
	have := false
	for _, e := range p.entries(n, what+": fixture expect", []string{"count", "matches"}) {
		have = true
		switch e.key {
		case "count":
			if v, ok := p.integer(e.v, what+": expect.count"); ok {
				if v < 0 || v > math.MaxInt32 {
					p.errf(e.v, "%s: expect.count %d out of range", what, v)
				}
				c := int(v)
				f.Count = &c
			}
		case "matches":
			f.Matches = []ProcessKey{}
			for _, mn := range p.seq(e.v, what+": expect.matches") {
				var k ProcessKey
				got := map[string]bool{}
				for _, me := range p.entries(mn, what+": expect.matches", []string{"host", "pid", "start"}) {
					got[me.key] = true
					switch me.key {
					case "host":
						k.Host, _ = p.str(me.v, what+": match host")
					case "pid":
						if v, ok := p.integer(me.v, what+": match pid"); ok {
							if v < 0 || v > math.MaxUint32 {
								p.errf(me.v, "%s: match pid %d out of range", what, v)
							}
							k.PID = uint32(v)
						}
					case "start":
						if v, ok := p.integer(me.v, what+": match start"); ok {
							k.Start = uint64(v)
						}
					}
				}
				if !got["pid"] || !got["start"] {
					p.errf(mn, "%s: a match names pid and start (host defaults to %q)", what, defaultFixtureHost)
				}
				if !got["host"] {
					k.Host = defaultFixtureHost
				}
				f.Matches = append(f.Matches, k)
			}
		}
	}
	if !have {
		p.errf(n, "%s: expect: give count, matches or both", what)
	}
}

// row reads a fixture row: column -> scalar; a list or mapping value is
// stored as JSON text (argv: in sqlstore.EncodeArgv form); a timestamp
// becomes Unix nanoseconds, as every time column holds.
func (p *parser) row(n *yaml.Node, what string) (FixtureRow, bool) {
	n = p.resolve(n)
	r := FixtureRow{}
	if n == nil {
		return r, false
	}
	r.Line = n.Line
	before := len(p.probs)
	var autoCmdline string
	hasAuto := false
	for _, e := range p.entries(n, what+": fixture row", nil) {
		v := p.resolve(e.v)
		if v == nil {
			continue
		}
		var val any
		switch v.Kind {
		case yaml.ScalarNode:
			val = p.scalar(v, what)
		case yaml.SequenceNode, yaml.MappingNode:
			var x any
			if err := v.Decode(&x); err != nil {
				p.errf(v, "%s: column %s: %v", what, e.key, err)
				continue
			}
			if list, ok := x.([]any); ok && e.key == "argv" {
				argv := make([]string, len(list))
				for i, a := range list {
					argv[i] = fmt.Sprint(a)
				}
				s, err := sqlstore.EncodeArgv(argv)
				if err != nil {
					p.errf(v, "%s: argv: %v", what, err)
					continue
				}
				val = s
				autoCmdline = sqlstore.Cmdline(argv)
				hasAuto = true
				break
			}
			b, err := json.Marshal(jsonable(x))
			if err != nil {
				p.errf(v, "%s: column %s: %v", what, e.key, err)
				continue
			}
			val = string(b)
		}
		r.Cols = append(r.Cols, e.key)
		r.Vals = append(r.Vals, val)
	}
	if hasAuto && !slices.Contains(r.Cols, "cmdline") {
		r.Cols = append(r.Cols, "cmdline")
		r.Vals = append(r.Vals, autoCmdline)
	}
	return r, len(p.probs) == before
}

// jsonable turns yaml's map[string]any / []any tree into one json can
// encode (timestamps as RFC 3339).
func jsonable(x any) any {
	switch v := x.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = jsonable(e)
		}
	case []any:
		for i, e := range v {
			v[i] = jsonable(e)
		}
	case time.Time:
		return v.UTC().Format(time.RFC3339Nano)
	}
	return x
}

func (p *parser) scalar(v *yaml.Node, what string) any {
	switch v.ShortTag() {
	case "!!null":
		return nil
	case "!!bool":
		var b bool
		if v.Decode(&b) == nil {
			if b {
				return int64(1)
			}
			return int64(0)
		}
	case "!!int":
		var i int64
		if err := v.Decode(&i); err == nil {
			return i
		}
		var u uint64
		if err := v.Decode(&u); err == nil {
			return int64(u) // the store keeps uint64 as its int64 bit pattern
		}
		p.errf(v, "%s: %q does not fit in 64 bits", what, v.Value)
		return nil
	case "!!float":
		var f float64
		if v.Decode(&f) == nil {
			return f
		}
	case "!!timestamp":
		var t time.Time
		if v.Decode(&t) == nil {
			return t.UnixNano()
		}
	}
	return v.Value
}
