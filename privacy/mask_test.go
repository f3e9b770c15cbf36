package privacy

import (
	"errors"
	"testing"
)

func TestArgv(t *testing.T) {
	cases := []struct {
		argv   []string
		reveal bool
		want   string
	}{
		{nil, false, ""},
		{[]string{"/bin/ls"}, false, "/bin/ls"},
		{[]string{"/bin/bash", "-c", "rm -rf /"}, false, "/bin/bash [2 args masked]"},
		{[]string{"ssh", "db-1"}, false, "ssh [1 arg masked]"},
		{[]string{"/bin/bash", "-c", "rm -rf /"}, true, `/bin/bash -c "rm -rf /"`},
		{[]string{"echo", "a\nb", "\xff\xfe", "\x1b[2J"}, true, `echo "a\nb" "\xff\xfe" "\x1b[2J"`},
		{[]string{"a) (b", "x"}, false, `"a) (b" [1 arg masked]`},
		{[]string{"x", ""}, true, `x ""`},
	}
	for _, c := range cases {
		if got := Argv(c.argv, c.reveal); got != c.want {
			t.Errorf("Argv(%q, %v) = %q, want %q", c.argv, c.reveal, got, c.want)
		}
	}
}

func TestRevealNeedsReason(t *testing.T) {
	for _, r := range []Reveal{{On: true}, {On: true, Reason: "  "}, {On: true, Reason: "x"}} {
		if err := r.Check(); !errors.Is(err, ErrNoReason) {
			t.Errorf("Check(%+v) = %v, want ErrNoReason", r, err)
		}
	}
	for _, r := range []Reveal{{}, {On: true, Reason: "IR-1234 triage"}} {
		if err := r.Check(); err != nil {
			t.Errorf("Check(%+v) = %v, want nil", r, err)
		}
	}
}
