package bundle

import (
	"archive/tar"
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/dsse"
)

// fuzzKey is fixed so the committed seeds verify.
var fuzzKey = ed25519.NewKeyFromSeed(bytes.Repeat([]byte{7}, ed25519.SeedSize))

func fuzzPub() ed25519.PublicKey { return fuzzKey.Public().(ed25519.PublicKey) }

func signedEnvelope(t testing.TB, key ed25519.PrivateKey, payload []byte) []byte {
	t.Helper()
	b, err := json.Marshal(dsse.Sign(PayloadType, payload, KeyID(key.Public().(ed25519.PublicKey)), key))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawArchive writes the envelope and members as a bundle archive; nil
// members: one per manifest file, filled with "a: " cut to its size.
func rawArchive(t testing.TB, env []byte, m *Manifest, members []member) []byte {
	t.Helper()
	if members == nil && m != nil {
		for _, f := range m.Files {
			data := []byte("a: ")
			if f.Size >= 0 && f.Size < int64(len(data)) {
				data = data[:f.Size]
			}
			members = append(members, member{FilesPrefix + f.Path, data})
		}
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	all := append([]member{{ManifestMember, env}}, members...)
	for _, mb := range all {
		// A name tar cannot hold (fuzzed manifests) just leaves the member out.
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeReg, Name: mb.name, Size: int64(len(mb.data)), Mode: 0o644,
			ModTime: time.Unix(1_800_000_000, 0), Format: tar.FormatPAX}); err == nil {
			tw.Write(mb.data)
		}
	}
	tw.Close()
	return buf.Bytes()
}

// sentinels are the errors a bundle's content may fail with.
var sentinels = []error{ErrMalformed, ErrFormat, ErrSignature, ErrDigest, ErrUnsafe, ErrTooLarge}

func wrapsSentinel(err error) bool {
	for _, s := range sentinels {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// FuzzBundle feeds the decoder arbitrary files, and arbitrary manifests
// behind a valid signature (the signature gate would otherwise stop nearly
// every input before the manifest is read).
func FuzzBundle(f *testing.F) {
	for _, s := range fuzzSeeds(f) {
		f.Add(s)
	}
	trusted := []ed25519.PublicKey{fuzzPub()}
	f.Fuzz(func(t *testing.T, data []byte) {
		check := func(b []byte) {
			op, err := Verify(bytes.NewReader(b), trusted, nil)
			if err != nil {
				if op != nil {
					t.Fatal("manifest returned with an error")
				}
				if !wrapsSentinel(err) {
					t.Fatalf("error wraps no sentinel: %v", err)
				}
				return
			}
			if err := op.Manifest.Validate(); err != nil {
				t.Fatalf("verified manifest does not validate: %v", err)
			}
			for _, fl := range op.Manifest.Files {
				if err := CheckPath(fl.Path); err != nil {
					t.Fatalf("verified bundle with unsafe path: %v", err)
				}
			}
		}
		check(data)
		// As a signed manifest: exercises every manifest rule.
		var m Manifest
		if json.Unmarshal(data, &m) == nil {
			check(rawArchive(t, signedEnvelope(t, fuzzKey, data), &m, nil))
		} else {
			check(rawArchive(t, signedEnvelope(t, fuzzKey, data), nil, nil))
		}
	})
}

// FuzzState feeds the node's own state files (applied-bundles log and
// journal) arbitrary bytes: a damaged file must be an error, not a panic.
func FuzzState(f *testing.F) {
	for _, s := range stateSeeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if log, err := parseApplied(data, "fuzz"); err != nil && !errors.Is(err, ErrState) {
			t.Fatalf("applied log error wraps no sentinel: %v", err)
		} else if err == nil && latest(log) == nil && len(log) > 0 {
			t.Fatal("latest of a non-empty log is nil")
		}
		if jr, err := parseJournal(data); err != nil && !errors.Is(err, ErrState) {
			t.Fatalf("journal error wraps no sentinel: %v", err)
		} else if err == nil {
			for _, e := range jr.Entries {
				if !filepath.IsAbs(e.Target) || !filepath.IsAbs(e.Staged) {
					t.Fatalf("journal with relative target %q or staged %q accepted", e.Target, e.Staged)
				}
				if e.Existed != (e.Old != "") {
					t.Fatalf("journal entry %q: existed=%t with old %q accepted", e.Target, e.Existed, e.Old)
				}
			}
		}
	})
}

// stateSeeds are state files: an applied-bundles log, journals before and
// after the commit point, and damaged ones.
func stateSeeds() map[string][]byte {
	good := Applied{Time: time.Unix(1_800_000_000, 0).UTC(), Digest: "ab12", Sequence: 3, Created: time.Unix(1_799_999_000, 0).UTC(), Key: "k", Files: []string{"etc/x"}}
	line, _ := json.Marshal(good)
	j := journal{Digest: "ab", Sequence: 3, Entries: []journalEntry{{Target: "/etc/x", Staged: "/etc/.x.new", Old: "/etc/.x.old", Existed: true, SHA256: "00"}}, Dirs: []string{"/etc/y"}}
	jb, _ := json.Marshal(j)
	j.Commit = &good
	cb, _ := json.Marshal(j)
	return map[string][]byte{
		"applied":         append(line, '\n'),
		"journal":         jb,
		"journal-commit":  cb,
		"relative-target": []byte(`{"digest":"a","sequence":1,"entries":[{"target":"etc/x","staged":"/s","existed":false,"sha256":"0"}]}`),
		"commit-mismatch": []byte(`{"digest":"a","sequence":1,"entries":[],"commit":{"applied":"2027-01-15T08:00:00Z","digest":"a","sequence":1,"created":"2027-01-15T08:00:00Z","key":"k","files":["etc/x"]}}`),
		"applied-damaged": []byte("{}\n{\"sequence\":-1}\n"),
	}
}

// fuzzSeeds are bundles made with the fixed key: valid ones, and the
// damaged and hostile shapes the decoder must refuse.
func fuzzSeeds(t testing.TB) map[string][]byte {
	t.Helper()
	dir := t.TempDir()
	write := func(name, data string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pack := write("p.yaml", "format: 1\npack: p\nversion: \"1\"\nrules: []\n")
	srcs := []Source{
		{Kind: KindRules, Src: pack, Path: "etc/daemoneye/rules/p.yaml"},
		{Kind: KindRulesSig, Src: write("p.sig", "c2lnbmF0dXJl\n"), Path: "etc/daemoneye/rules/p.yaml.sig"},
		{Kind: KindConfig, Src: write("c.yaml", "log:\n  level: info\n"), Path: "etc/daemoneye/daemoneye.yaml"},
	}
	var valid bytes.Buffer
	if _, err := Create(&valid, Header{Created: time.Unix(1_800_000_000, 0), Sequence: 9, Creator: "fuzz", Targets: []string{"agent"}}, srcs, fuzzKey, nil); err != nil {
		t.Fatal(err)
	}
	b := valid.Bytes()
	m := Manifest{Format: Format, Created: time.Unix(1_800_000_000, 0).UTC(), Sequence: 2, Creator: "x", Targets: []string{"center"},
		Files: []File{{Kind: KindConfig, Path: "etc/a.yaml", Size: 3, SHA256: sha256Hex([]byte("a: ")), Mode: "0640"}}}
	mj, _ := json.Marshal(m)
	traversal := m
	traversal.Files = []File{{Kind: KindConfig, Path: "../etc/shadow", Size: 3, SHA256: sha256Hex([]byte("a: ")), Mode: "0640"}}
	tj, _ := json.Marshal(traversal)
	dup := m
	dup.Files = []File{m.Files[0], m.Files[0]}
	dj, _ := json.Marshal(dup)
	v2 := m
	v2.Format = "daemoneye-bundle/v2"
	vj, _ := json.Marshal(v2)
	big := m
	big.Files = []File{{Kind: KindBinary, Path: "usr/bin/x", Size: 1 << 40, SHA256: sha256Hex(nil), Mode: "0755"}}
	bj, _ := json.Marshal(big)
	return map[string][]byte{
		"valid":            b,
		"valid-manifest":   mj,
		"signed-simple":    rawBundle(t, fuzzKey, &m, nil),
		"traversal":        rawBundle(t, fuzzKey, &traversal, []member{{"files/../etc/shadow", []byte("a: ")}}),
		"traversal-json":   tj,
		"duplicate":        rawBundle(t, fuzzKey, &dup, nil),
		"duplicate-json":   dj,
		"format-v2":        rawBundle(t, fuzzKey, &v2, nil),
		"format-v2-json":   vj,
		"oversize-json":    bj,
		"truncated":        b[:len(b)/2],
		"tampered":         append(bytes.Clone(b[:1600]), append([]byte{b[1600] ^ 1}, b[1601:]...)...),
		"extra-member":     rawArchive(t, signedEnvelope(t, fuzzKey, mj), &m, []member{{"files/etc/a.yaml", []byte("a: ")}, {"files/x", nil}}),
		"not-dsse":         rawArchive(t, []byte(`{"payloadType":1}`), nil, nil),
		"empty":            nil,
		"manifest-missing": rawArchive(t, nil, nil, nil)[512:],
	}
}

// TestWriteFuzzCorpus regenerates testdata/fuzz/FuzzBundle and FuzzState when
// BUNDLE_WRITE_CORPUS=1.
func TestWriteFuzzCorpus(t *testing.T) {
	if os.Getenv("BUNDLE_WRITE_CORPUS") != "1" {
		t.Skip("set BUNDLE_WRITE_CORPUS=1 to regenerate testdata/fuzz")
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzBundle")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range fuzzSeeds(t) {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	dir = filepath.Join("testdata", "fuzz", "FuzzState")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, data := range stateSeeds() {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", data)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// The committed valid seed still verifies: the format has not drifted.
func TestFuzzSeedValid(t *testing.T) {
	seeds := fuzzSeeds(t)
	if _, err := Verify(bytes.NewReader(seeds["valid"]), []ed25519.PublicKey{fuzzPub()}, nil); err != nil {
		t.Fatalf("valid seed: %v", err)
	}
	committed, err := os.ReadFile(filepath.Join("testdata", "fuzz", "FuzzBundle", "valid"))
	if err != nil {
		t.Fatalf("committed seed: %v (regenerate with BUNDLE_WRITE_CORPUS=1)", err)
	}
	if want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", seeds["valid"]); string(committed) != want {
		t.Error("committed valid seed differs from what Create writes now: regenerate with BUNDLE_WRITE_CORPUS=1")
	}
}
