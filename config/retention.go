package config

import (
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Retention bounds how long the center keeps what agents sent. A purge
// removes the events of a host older than its window from the SQL store
// and the batch store; the audit ledger keeps its leaves (hashes), and
// each purge is itself a ledger entry.
type Retention struct {
	// Window is how long a host's events are kept, counted from the
	// newest event of the batch they arrived in (by the agent's clock,
	// never later than when the center received it). 0 keeps them forever.
	Window Period `yaml:"window"`
	// Sites sets the window of the hosts of a site (their agent.site_tag),
	// instead of Window: site tag -> window (0: forever).
	Sites map[string]Period `yaml:"sites"`
	// Every is how often the purge runs.
	Every Period `yaml:"every"`
	// KeepOpenTraces keeps every event of a trace that has not ended
	// (pending, approved or active) past its window.
	KeepOpenTraces bool `yaml:"keep_open_traces"`
	// Hold lists trace ids under legal hold: their events are kept
	// whatever the window, until the id is taken off this list.
	Hold []string `yaml:"hold"`
}

// Bounds of the retention settings.
const (
	MinRetentionWindow = time.Hour   // a shorter window is a typo more often than a policy
	MinRetentionEvery  = time.Second // the purge costs little when nothing is due
)

// WindowOf is the window of a site's hosts: its own, or Window.
func (r Retention) WindowOf(site string) time.Duration {
	if w, ok := r.Sites[site]; ok {
		return time.Duration(w)
	}
	return time.Duration(r.Window)
}

// checkRetention checks center.retention.
func checkRetention(r Retention) []string {
	var errs []string
	window := func(key string, w Period) {
		switch d := time.Duration(w); {
		case d < 0:
			errs = append(errs, fmt.Sprintf("%s: must not be negative, got %s", key, w))
		case d > 0 && d < MinRetentionWindow:
			errs = append(errs, fmt.Sprintf("%s: %s is shorter than the minimum of %s (0 keeps events forever)", key, w, Period(MinRetentionWindow)))
		}
	}
	window("center.retention.window", r.Window)
	for _, site := range sortedKeys(r.Sites) {
		key := fmt.Sprintf("center.retention.sites[%q]", site)
		if strings.TrimSpace(site) == "" {
			errs = append(errs, "center.retention.sites: a site tag must not be empty (hosts without a site tag get center.retention.window)")
			continue
		}
		window(key, r.Sites[site])
	}
	if d := time.Duration(r.Every); d < MinRetentionEvery {
		errs = append(errs, fmt.Sprintf("center.retention.every: want at least %s, got %s", Period(MinRetentionEvery), r.Every))
	}
	for i, id := range r.Hold {
		switch {
		case strings.TrimSpace(id) == "":
			errs = append(errs, fmt.Sprintf("center.retention.hold[%d]: empty trace id", i))
		case slices.Index(r.Hold, id) < i:
			errs = append(errs, fmt.Sprintf("center.retention.hold[%d]: trace %q is listed twice", i, id))
		}
	}
	return errs
}

// Period is a length of time that reads and writes in days as well as in
// Go's units: "90d", "36h", "1h30m", "1d12h". A bare number is refused:
// 90 could mean seconds or days.
type Period time.Duration

const day = 24 * time.Hour

// ParsePeriod reads a period such as "90d" or "36h".
func ParsePeriod(s string) (Period, error) {
	t := strings.TrimSpace(s)
	if t == "0" {
		return 0, nil
	}
	var days int64
	if i := strings.IndexByte(t, 'd'); i >= 0 {
		n, err := strconv.ParseInt(t[:i], 10, 64)
		if err != nil || n < 0 || n > int64(math.MaxInt64/day) {
			return 0, fmt.Errorf("invalid period %q: want a number of days before the d, as in 90d", s)
		}
		days, t = n, t[i+1:]
		if t == "" {
			return Period(time.Duration(days) * day), nil
		}
	}
	d, err := time.ParseDuration(t)
	if err != nil {
		return 0, fmt.Errorf("invalid period %q: want a duration such as 90d, 36h or 1d12h", s)
	}
	if days > 0 && d < 0 {
		return 0, fmt.Errorf("invalid period %q: the part after the days must not be negative", s)
	}
	total := time.Duration(days)*day + d
	if days > 0 && total < d {
		return 0, fmt.Errorf("invalid period %q: too long", s)
	}
	return Period(total), nil
}

// String writes whole days as "90d" and the rest in Go's form.
func (p Period) String() string {
	d := time.Duration(p)
	if d <= 0 || d < day {
		return d.String()
	}
	days, rest := d/day, d%day
	if rest == 0 {
		return strconv.FormatInt(int64(days), 10) + "d"
	}
	return strconv.FormatInt(int64(days), 10) + "d" + rest.String()
}

// UnmarshalText lets YAML, env and flags use days.
func (p *Period) UnmarshalText(text []byte) error {
	v, err := ParsePeriod(string(text))
	if err != nil {
		return err
	}
	*p = v
	return nil
}

// MarshalText writes the period as String does.
func (p Period) MarshalText() ([]byte, error) { return []byte(p.String()), nil }
