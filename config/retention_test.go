package config

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

func TestPeriod(t *testing.T) {
	for in, want := range map[string]time.Duration{
		"90d": 90 * day, "36h": 36 * time.Hour, "1d12h": 36 * time.Hour, "1h30m": 90 * time.Minute,
		"0": 0, " 7d ": 7 * day, "0d": 0,
	} {
		got, err := ParsePeriod(in)
		if err != nil || time.Duration(got) != want {
			t.Errorf("ParsePeriod(%q) = %v, %v; want %v", in, time.Duration(got), err, want)
		}
	}
	for _, bad := range []string{"", "90", "d", "-1d", "1d-2h", "7days", "x1d", "1dd", "99999999999999999d"} {
		if got, err := ParsePeriod(bad); err == nil {
			t.Errorf("ParsePeriod(%q) = %v, want an error", bad, got)
		}
	}
	for d, want := range map[time.Duration]string{90 * day: "90d", 36 * time.Hour: "1d12h0m0s", time.Hour: "1h0m0s", 0: "0s"} {
		if got := Period(d).String(); got != want {
			t.Errorf("Period(%v).String() = %q, want %q", d, got, want)
		}
		if back, err := ParsePeriod(Period(d).String()); err != nil || time.Duration(back) != d {
			t.Errorf("ParsePeriod(%q) = %v, %v; want %v back", Period(d).String(), back, err, d)
		}
	}
}

func TestRetentionLoads(t *testing.T) {
	file := writeFile(t, "center:\n  retention:\n    window: 30d\n    sites:\n      dmz: 7d\n      vault: 0\n    every: 15m\n    hold: [T-1, T-2]\n")
	l, err := Load(Sources{File: file, Environ: []string{"DAEMONEYE_CENTER_RETENTION_KEEP_OPEN_TRACES=false"}, Base: fixedDefaults})
	if err != nil {
		t.Fatal(err)
	}
	r := l.Config.Center.Retention
	if r.WindowOf("dmz") != 7*day || r.WindowOf("vault") != 0 || r.WindowOf("") != 30*day || r.WindowOf("other") != 30*day {
		t.Errorf("windows: dmz %v vault %v none %v other %v; want 7d, 0, 30d, 30d",
			r.WindowOf("dmz"), r.WindowOf("vault"), r.WindowOf(""), r.WindowOf("other"))
	}
	if time.Duration(r.Every) != 15*time.Minute || r.KeepOpenTraces || len(r.Hold) != 2 {
		t.Errorf("every %v keep_open_traces %v hold %v; want 15m, false (env), 2 traces", r.Every, r.KeepOpenTraces, r.Hold)
	}
	var buf bytes.Buffer
	if err := l.Show(&buf, "center.retention"); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"center.retention.window = 30d", "center.retention.sites = map[dmz:7d vault:0s]"} {
		if !strings.Contains(buf.String(), want) {
			t.Errorf("config show lacks %q:\n%s", want, buf.String())
		}
	}

	d := Default().Center.Retention
	if time.Duration(d.Window) != 90*day || time.Duration(d.Every) != time.Hour || !d.KeepOpenTraces || len(d.Sites) != 0 {
		t.Errorf("default retention = %+v, want 90d every 1h keeping open traces", d)
	}
}

func TestRetentionBadValues(t *testing.T) {
	for _, c := range []struct{ name, body, want string }{
		{"bare number", "center:\n  retention:\n    window: 90\n", `invalid period "90"`},
		{"short", "center:\n  retention:\n    window: 10m\n", "center.retention.window: 10m0s is shorter than the minimum of 1h0m0s (0 keeps events forever)"},
		{"negative", "center:\n  retention:\n    window: -5h\n", "center.retention.window: must not be negative"},
		{"site short", "center:\n  retention:\n    sites:\n      dmz: 30s\n", `center.retention.sites["dmz"]: 30s is shorter`},
		{"site empty", "center:\n  retention:\n    sites:\n      \"\": 7d\n", "a site tag must not be empty"},
		{"site bad", "center:\n  retention:\n    sites:\n      dmz: soon\n", `invalid period "soon"`},
		{"every", "center:\n  retention:\n    every: 0\n", "center.retention.every: want at least 1s, got 0s"},
		{"hold empty", "center:\n  retention:\n    hold: [T-1, \"\"]\n", "center.retention.hold[1]: empty trace id"},
		{"hold twice", "center:\n  retention:\n    hold: [T-1, T-1]\n", `center.retention.hold[1]: trace "T-1" is listed twice`},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := Load(Sources{File: writeFile(t, c.body), Base: fixedDefaults})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error = %v, want one containing %q", err, c.want)
			}
		})
	}
}

// FuzzParsePeriod: any text either fails or reads back as what it wrote.
func FuzzParsePeriod(f *testing.F) {
	for _, s := range []string{"90d", "1d12h", "36h", "0", "-1d", "9223372036854775807d", "1d-1ns"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		p, err := ParsePeriod(s)
		if err != nil {
			return
		}
		back, err := ParsePeriod(p.String())
		if err != nil || back != p {
			t.Fatalf("ParsePeriod(%q) = %v, whose String %q reads back as %v, %v", s, time.Duration(p), p.String(), time.Duration(back), err)
		}
	})
}
