package wire

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func rulePacksFrame(m *RulePacks) []byte {
	body, err := encMode.Marshal(m)
	if err != nil {
		panic(err)
	}
	return framed(env(TypeRulePacks, body))
}

// badRulePacks are encodings the decoder must refuse, by what they break.
func badRulePacks() map[string][]byte {
	pack := RulePack{Name: "site", Data: []byte("pack: site\n")}
	many := make([]RulePack, MaxRulePacks+1)
	for i := range many {
		many[i] = RulePack{Name: fmt.Sprintf("p%d", i), Data: []byte("x")}
	}
	return map[string][]byte{
		"rule-packs-seq0":      rulePacksFrame(&RulePacks{Packs: []RulePack{pack}}),
		"rule-packs-dup-name":  rulePacksFrame(&RulePacks{Seq: 2, Packs: []RulePack{pack, pack}}),
		"rule-packs-no-name":   rulePacksFrame(&RulePacks{Seq: 2, Packs: []RulePack{{Data: []byte("x")}}}),
		"rule-packs-empty":     rulePacksFrame(&RulePacks{Seq: 2, Packs: []RulePack{{Name: "e"}}}),
		"rule-packs-big-sig":   rulePacksFrame(&RulePacks{Seq: 2, Packs: []RulePack{{Name: "s", Data: []byte("x"), Sig: bytes.Repeat([]byte("A"), MaxRulePackSigLen+1)}}}),
		"rule-packs-too-many":  rulePacksFrame(&RulePacks{Seq: 2, Packs: many}),
		"rule-packs-long-name": rulePacksFrame(&RulePacks{Seq: 2, Packs: []RulePack{{Name: strings.Repeat("n", MaxRulePackName+1), Data: []byte("x")}}}),
	}
}

func TestRulePacksRefused(t *testing.T) {
	for name, b := range badRulePacks() {
		_, err := NewReader(bytes.NewReader(b), Limits{}).ReadFrame()
		if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "rule-packs") {
			t.Errorf("%s: %v, want ErrMalformed naming rule-packs", name, err)
		}
	}
	// The empty set is valid: the center has no customer packs (any more).
	b := rulePacksFrame(&RulePacks{Seq: 3})
	f, err := NewReader(bytes.NewReader(b), Limits{}).ReadFrame()
	if err != nil || f.(*RulePacks).Seq != 3 || len(f.(*RulePacks).Packs) != 0 {
		t.Errorf("empty set: %#v %v", f, err)
	}
}

// TestWriteRulePacksCorpus adds the refused shapes to FuzzReadFrame's seeds
// when WIRE_WRITE_CORPUS=1 (the valid frame is among allFrames).
func TestWriteRulePacksCorpus(t *testing.T) {
	if os.Getenv("WIRE_WRITE_CORPUS") != "1" {
		t.Skip("set WIRE_WRITE_CORPUS=1 to regenerate testdata/fuzz")
	}
	for name, b := range badRulePacks() {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		if err := os.WriteFile(filepath.Join("testdata", "fuzz", "FuzzReadFrame", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func TestSaveLoadRulePacks(t *testing.T) {
	path := filepath.Join(t.TempDir(), "rulepacks.frame")
	if set, err := LoadRulePacks(path); set != nil || err != nil {
		t.Fatalf("no file: %v, %v; want nil, nil", set, err)
	}
	want := &RulePacks{Seq: 7, Packs: []RulePack{{Name: "site.yaml", Data: []byte("format: 1\n"), Sig: []byte("sig")}}}
	if err := SaveRulePacks(path, want); err != nil {
		t.Fatal(err)
	}
	got, err := LoadRulePacks(path)
	if err != nil || got.Seq != 7 || len(got.Packs) != 1 || got.Packs[0].Name != "site.yaml" || string(got.Packs[0].Data) != "format: 1\n" {
		t.Fatalf("round trip: %+v, %v", got, err)
	}
	for _, bad := range [][]byte{[]byte("garbage"), nil} {
		if err := os.WriteFile(path, bad, 0o600); err != nil {
			t.Fatal(err)
		}
		if set, err := LoadRulePacks(path); err == nil {
			t.Errorf("%q: %+v, want an error", bad, set)
		}
	}
}
