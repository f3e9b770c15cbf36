package privacy

import (
	"strings"
	"testing"
)

func TestPolicySecrets(t *testing.T) {
	p, err := NewPolicy(Rules{Mode: ModeSecrets, KeepArgv0: true, SecretFlags: []string{"--vault-pin"}, SecretPatterns: []string{`(?i)^pin:(\d+)$`}})
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		argv []string
		want string
	}{
		{[]string{"ls", "-la", "/tmp"}, "ls -la /tmp"},
		{[]string{"mysql", "-u", "root", "-p", "hunter2", "db"}, "mysql -u root -p [masked] db"},
		{[]string{"tool", "--password=hunter2", "--user=bob"}, "tool --password=[masked] --user=bob"},
		{[]string{"tool", "--token", "abc", "--verbose"}, "tool --token [masked] --verbose"},
		{[]string{"env", "DB_PASSWORD=s3cret", "PATH=/bin"}, "env DB_PASSWORD=[masked] PATH=/bin"},
		{[]string{"curl", "-H", "Authorization: Bearer xyz.abc", "https://h/"}, `curl -H "Authorization: [masked]" https://h/`},
		{[]string{"git", "clone", "https://bob:pa55@git.example/r.git"}, "git clone https://bob:[masked]@git.example/r.git"},
		{[]string{"aws", "--profile", "x", "AKIAABCDEFGHIJKLMNOP"}, "aws --profile x [masked]"},
		{[]string{"x", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTYifQ.sig"}, "x [masked]"},
		{[]string{"x", "--vault-pin", "1234"}, "x --vault-pin [masked]"},
		{[]string{"x", "pin:4321"}, "x pin:[masked]"},
		{[]string{"x", "-p"}, "x -p"}, // a secret flag with no value
		{[]string{"echo", "a\nb"}, `echo "a\nb"`},
	}
	for _, c := range cases {
		if got := p.Argv(c.argv, false); got != c.want {
			t.Errorf("Argv(%q) = %q, want %q", c.argv, got, c.want)
		}
		if got := p.Argv(c.argv, true); strings.Contains(got, Masked) {
			t.Errorf("revealed Argv(%q) = %q still masks", c.argv, got)
		}
	}
	if p.Masks([]string{"ls", "-la"}) || !p.Masks([]string{"x", "--token=1"}) {
		t.Error("Masks disagrees with Argv")
	}
}

func TestPolicyCountAndArgv0(t *testing.T) {
	p, err := NewPolicy(Rules{Mode: ModeCount, KeepArgv0: false})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := p.Argv([]string{"/bin/bash", "-c", "id"}, false), "[masked] [2 args masked]"; got != want {
		t.Errorf("got %q, want %q", got, want)
	}
	if !p.Masks([]string{"/bin/ls"}) {
		t.Error("argv[0] masked but Masks says nothing is")
	}
	// The default policy (argv[0] and a count) is what Argv uses.
	if got, want := Argv([]string{"ssh", "db-1"}, false), "ssh [1 arg masked]"; got != want {
		t.Errorf("Argv = %q, want %q", got, want)
	}
	old := Default()
	t.Cleanup(func() { SetDefault(old) })
	s, _ := NewPolicy(Rules{Mode: ModeSecrets, KeepArgv0: true})
	SetDefault(s)
	if got, want := Argv([]string{"ssh", "db-1"}, false), "ssh db-1"; got != want {
		t.Errorf("after SetDefault(secrets): Argv = %q, want %q", got, want)
	}
}

func TestPolicyRulesRefused(t *testing.T) {
	for _, c := range []struct {
		r    Rules
		want string
	}{
		{Rules{Mode: "none"}, `privacy.mode: "none" is not one of count, secrets`},
		{Rules{Mode: ModeSecrets, SecretFlags: []string{"password"}}, `privacy.secret_flags: "password" is not a flag`},
		{Rules{Mode: ModeSecrets, SecretFlags: []string{"--a=b"}}, "is not a flag"},
		{Rules{Mode: ModeSecrets, SecretPatterns: []string{"("}}, "privacy.secret_patterns[0]: error parsing regexp"},
		{Rules{Mode: ModeSecrets, SecretPatterns: []string{"(a)(b)"}}, "has 2 capture groups"},
		{Rules{Mode: ModeSecrets, SecretPatterns: []string{"x*"}}, "matches the empty string"},
	} {
		_, err := NewPolicy(c.r)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewPolicy(%+v) = %v, want an error containing %q", c.r, err, c.want)
		}
	}
}

func FuzzPolicyMask(f *testing.F) {
	f.Add("mysql", "-p", "hunter2")
	f.Add("curl", "-H", "Authorization: Bearer x")
	f.Add("git", "https://a:b@c/d", "--token=x")
	p, err := NewPolicy(Rules{Mode: ModeSecrets, KeepArgv0: true})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, a, b, c string) {
		argv := []string{a, b, c}
		shown, withheld, _ := p.Mask(argv)
		if len(shown)+withheld != len(argv) {
			t.Fatalf("Mask(%q) shows %d and withholds %d of %d", argv, len(shown), withheld, len(argv))
		}
		// The value after a secret flag never shows.
		if p.flags[b] && c != Masked && len(shown) == 3 && shown[2] != Masked {
			t.Fatalf("value of %s shown: %q", b, shown)
		}
	})
}
