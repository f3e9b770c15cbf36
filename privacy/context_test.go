package privacy

import "testing"

func TestContext(t *testing.T) {
	for in, want := range map[string]string{
		`{"why":"shell","cmdline":"bash -c id","nested":[{"ARGV":["a","b"]}],"env":{"X":"1"}}`: `{"cmdline":"[masked]","env":"[masked]","nested":[{"ARGV":"[masked]"}],"why":"shell"}`,
		`[{"args":"x"}]`:  `[{"args":"[masked]"}]`,
		`"just a string"`: `{}`,
		`not json`:        `{}`,
	} {
		if got := string(Context(in)); got != want {
			t.Errorf("Context(%s) = %s, want %s", in, got, want)
		}
	}
}
