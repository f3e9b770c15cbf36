package privacy

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
)

// Masking modes.
const (
	// ModeCount shows argv[0] and the number of arguments withheld: the
	// default, and the safest.
	ModeCount = "count"
	// ModeSecrets shows the arguments but masks the values of known secret
	// flags (--password VALUE, --token=VALUE) and of arguments matching a
	// secret pattern (key=value pairs named like secrets, passwords in
	// URLs, bearer tokens, private keys).
	ModeSecrets = "secrets"
)

// Masked is the placeholder of a masked value.
const Masked = "[masked]"

// DefaultSecretFlags are the flags whose value ModeSecrets masks, in the
// next argument or after "=".
var DefaultSecretFlags = []string{
	"--password", "--passwd", "--pass", "--pw", "-p",
	"--token", "--auth-token", "--access-token", "--refresh-token", "--bearer",
	"--secret", "--client-secret", "--secret-key", "--access-key", "--api-key", "--apikey",
	"--private-key", "--key-password", "--passphrase", "--auth", "--credentials",
}

// DefaultSecretPatterns are the patterns ModeSecrets masks inside any
// argument: the first capture group when the pattern has one, else the
// whole match.
var DefaultSecretPatterns = []string{
	// key=value pairs named like secrets: PASSWORD=x, db_pass=x, api_key=x.
	`(?i)(?:pass(?:word|wd)?|pwd|secret|token|api[_-]?key|access[_-]?key|credentials?)[a-z0-9_.-]*=(\S+)`,
	// HTTP headers on a command line (curl -H).
	`(?i)^(?:authorization|proxy-authorization|x-api-key|x-auth-token|cookie):\s*(.+)$`,
	// The password of user:password@ in a URL.
	`[a-zA-Z][a-zA-Z0-9+.-]*://[^/:@\s]*:([^@/\s]+)@`,
	`(?i)\bbearer\s+(\S+)`,
	// JSON web tokens, AWS access key ids, PEM private keys.
	`\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*`,
	`\b(?:AKIA|ASIA)[0-9A-Z]{16}\b`,
	`(?s)-----BEGIN [A-Z ]*PRIVATE KEY-----.*`,
}

// Rules configure a Policy (the `privacy:` section of the configuration).
type Rules struct {
	// Mode is ModeCount or ModeSecrets.
	Mode string
	// KeepArgv0 shows argv[0] (the program as invoked); off, it is masked
	// too and only the executable path elsewhere in a view names it.
	KeepArgv0 bool
	// SecretFlags and SecretPatterns are added to the defaults (ModeSecrets).
	SecretFlags    []string
	SecretPatterns []string
}

// Policy decides what of a command line an operator sees without a
// reveal. The zero value is not usable: see NewPolicy and Default.
type Policy struct {
	mode      string
	keepArgv0 bool
	flags     map[string]bool
	patterns  []*regexp.Regexp
}

// NewPolicy checks and compiles masking rules; errors name the bad rule.
func NewPolicy(r Rules) (*Policy, error) {
	p := &Policy{mode: r.Mode, keepArgv0: r.KeepArgv0, flags: map[string]bool{}}
	switch r.Mode {
	case ModeCount, ModeSecrets:
	case "":
		p.mode = ModeCount
	default:
		return nil, fmt.Errorf("privacy.mode: %q is not one of %s, %s", r.Mode, ModeCount, ModeSecrets)
	}
	for _, f := range slices.Concat(DefaultSecretFlags, r.SecretFlags) {
		if !strings.HasPrefix(f, "-") || strings.ContainsAny(f, "= \t") || len(f) < 2 {
			return nil, fmt.Errorf("privacy.secret_flags: %q is not a flag (want -x or --name, without =)", f)
		}
		p.flags[f] = true
	}
	for i, s := range slices.Concat(DefaultSecretPatterns, r.SecretPatterns) {
		re, err := regexp.Compile(s)
		if err != nil {
			return nil, fmt.Errorf("privacy.secret_patterns[%d]: %w", i-len(DefaultSecretPatterns), err)
		}
		if re.NumSubexp() > 1 {
			return nil, fmt.Errorf("privacy.secret_patterns[%d]: %q has %d capture groups, want at most 1 (the part to mask); use (?:...) for the others",
				i-len(DefaultSecretPatterns), s, re.NumSubexp())
		}
		if re.MatchString("") {
			return nil, fmt.Errorf("privacy.secret_patterns[%d]: %q matches the empty string", i-len(DefaultSecretPatterns), s)
		}
		p.patterns = append(p.patterns, re)
	}
	return p, nil
}

// Mode reports the policy's mode.
func (p *Policy) Mode() string { return p.mode }

var defaultPolicy atomic.Pointer[Policy]

func init() {
	p, err := NewPolicy(Rules{Mode: ModeCount, KeepArgv0: true})
	if err != nil {
		panic(err)
	}
	defaultPolicy.Store(p)
}

// Default is the process's policy: argv[0] and a count until SetDefault
// installs the configured one (each role does so once at start, from the
// `privacy:` section, so every view of the process masks alike).
func Default() *Policy { return defaultPolicy.Load() }

// SetDefault installs p as the process's policy.
func SetDefault(p *Policy) {
	if p != nil {
		defaultPolicy.Store(p)
	}
}

// Mask returns what may be shown of argv: tokens to display (raw, not yet
// made terminal-safe; masked values replaced by Masked), the number of
// arguments withheld after them, and whether anything was masked at all.
func (p *Policy) Mask(argv []string) (shown []string, withheld int, masked bool) {
	if len(argv) == 0 {
		return nil, 0, false
	}
	first := argv[0]
	if !p.keepArgv0 {
		first, masked = Masked, true
	}
	if p.mode == ModeCount {
		return []string{first}, len(argv) - 1, masked || len(argv) > 1
	}
	shown = make([]string, len(argv))
	shown[0] = first
	valueNext := false
	for i, a := range argv[1:] {
		out := a
		switch {
		case valueNext:
			out, valueNext = Masked, false
		case p.flags[a]:
			valueNext = true
		default:
			if f, _, ok := strings.Cut(a, "="); ok && p.flags[f] {
				out = f + "=" + Masked
			} else {
				out = p.maskPatterns(a)
			}
		}
		masked = masked || out != a
		shown[i+1] = out
	}
	return shown, 0, masked
}

// maskPatterns replaces what the secret patterns match in a.
func (p *Policy) maskPatterns(a string) string {
	for _, re := range p.patterns {
		locs := re.FindAllStringSubmatchIndex(a, -1)
		if locs == nil {
			continue
		}
		var b strings.Builder
		last := 0
		for _, l := range locs {
			from, to := l[0], l[1]
			if len(l) >= 4 && l[2] >= 0 {
				from, to = l[2], l[3]
			}
			if from < last {
				continue
			}
			b.WriteString(a[last:from])
			b.WriteString(Masked)
			last = to
		}
		b.WriteString(a[last:])
		a = b.String()
	}
	return a
}

// Argv renders a command line for display, terminal-safe: everything when
// revealed, otherwise what the policy shows.
func (p *Policy) Argv(argv []string, reveal bool) string {
	if len(argv) == 0 {
		return ""
	}
	shown, withheld := argv, 0
	if !reveal {
		shown, withheld, _ = p.Mask(argv)
	}
	return Render(shown, withheld)
}

// Masks reports whether the policy hides anything of argv.
func (p *Policy) Masks(argv []string) bool {
	_, _, m := p.Mask(argv)
	return m
}

// Render joins display tokens terminal-safely (Safe) and notes the number
// of withheld arguments.
func Render(shown []string, withheld int) string {
	var b strings.Builder
	for i, a := range shown {
		if i > 0 {
			b.WriteByte(' ')
		}
		if a == Masked {
			b.WriteString(a)
		} else {
			b.WriteString(Safe(a))
		}
	}
	if withheld > 0 {
		fmt.Fprintf(&b, " [%d arg%s masked]", withheld, plural(withheld))
	}
	return b.String()
}
