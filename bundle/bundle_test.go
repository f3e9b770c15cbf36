package bundle

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/flock"
	"github.com/evilbitlabs/daemoneye/rules"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// kit holds a bundle key, a rule key and the source files of a bundle.
type kit struct {
	t        *testing.T
	dir      string
	key      ed25519.PrivateKey
	pub      ed25519.PublicKey
	rulesKey ed25519.PrivateKey
	rulesPub ed25519.PublicKey
	ca       *pki.CA
}

func newKit(t *testing.T) *kit {
	t.Helper()
	k := &kit{t: t, dir: t.TempDir()}
	k.key, k.pub = genKey(t, filepath.Join(k.dir, "bundle.key"))
	k.rulesKey, k.rulesPub = genKey(t, filepath.Join(k.dir, "rules.key"))
	ca, err := pki.Init(filepath.Join(k.dir, "pki"), "bundletest", 0)
	if err != nil {
		t.Fatal(err)
	}
	k.ca = ca
	return k
}

// genKey makes a key pair with the rules key helpers (as `bundle keygen`).
func genKey(t testing.TB, path string) (ed25519.PrivateKey, ed25519.PublicKey) {
	t.Helper()
	if _, err := rules.GenerateKey(path); err != nil {
		t.Fatal(err)
	}
	priv, err := rules.LoadPrivateKey(path)
	if err != nil {
		t.Fatal(err)
	}
	pubs, err := rules.LoadPublicKeys(path + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return priv, pubs[0]
}

// write puts a source file in the kit's directory.
func (k *kit) write(name string, data []byte) string {
	k.t.Helper()
	p := filepath.Join(k.dir, "src", name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		k.t.Fatal(err)
	}
	if err := os.WriteFile(p, data, 0o644); err != nil {
		k.t.Fatal(err)
	}
	return p
}

// pack writes the marker pack (optionally changed) and its signature.
func (k *kit) pack(name, version string) string {
	k.t.Helper()
	b, err := os.ReadFile("testdata/marker.yaml")
	if err != nil {
		k.t.Fatal(err)
	}
	b = bytes.Replace(b, []byte(`version: "1.0.0"`), []byte(fmt.Sprintf("version: %q", version)), 1)
	p := k.write(name, b)
	k.write(name+rules.SigSuffix, rules.EncodeSignature(rules.Sign(b, k.rulesKey)))
	return p
}

// standard is a bundle of a signed rule pack, a configuration and a CRL.
func (k *kit) standard(version, logLevel string) []Source {
	pack := k.pack("marker-"+version+".yaml", version)
	return []Source{
		{Kind: KindRules, Src: pack, Path: "etc/daemoneye/rules/marker.yaml"},
		{Kind: KindRulesSig, Src: pack + rules.SigSuffix, Path: "etc/daemoneye/rules/marker.yaml.sig"},
		{Kind: KindConfig, Src: k.write("cfg-"+version+".yaml", []byte("log:\n  level: "+logLevel+"\n")), Path: "etc/daemoneye/daemoneye.yaml"},
		{Kind: KindCRL, Src: k.write("crl.pem", k.ca.CRLPEM()), Path: "var/lib/daemoneye/agent/crl.pem"},
	}
}

func (k *kit) create(name string, seq uint64, srcs []Source) string {
	k.t.Helper()
	out := filepath.Join(k.dir, name)
	if _, err := CreateFile(out, Header{Sequence: seq, Creator: "tester", Targets: []string{"agent", "center"}}, srcs, k.key, nil); err != nil {
		k.t.Fatal(err)
	}
	return out
}

func (k *kit) opts(root string) ApplyOptions {
	return ApplyOptions{Root: root, Trusted: []ed25519.PublicKey{k.pub}, RulesTrusted: []ed25519.PublicKey{k.rulesPub}, CA: k.ca.Certificate()}
}

// snapshot is every file and directory under root with its mode and
// content hash, the state directory left out.
func snapshot(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		if rel == filepath.FromSlash(DefaultStateDir) {
			return filepath.SkipDir
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		v := fi.Mode().String()
		if fi.Mode().IsRegular() {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			s := sha256.Sum256(b)
			v += " " + hex.EncodeToString(s[:]) + " " + fi.ModTime().String()
		}
		out[rel] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func sameTree(t *testing.T, what string, before, after map[string]string) {
	t.Helper()
	if !reflect.DeepEqual(before, after) {
		for k, v := range before {
			if after[k] != v {
				t.Errorf("%s: %s was %q, now %q", what, k, v, after[k])
			}
		}
		for k, v := range after {
			if _, ok := before[k]; !ok {
				t.Errorf("%s: %s appeared (%s)", what, k, v)
			}
		}
	}
}

// oldRoot is a root with an old configuration and an old pack in place.
func oldRoot(t *testing.T) string {
	root := t.TempDir()
	// The state directory exists on a node that applied bundles before.
	os.MkdirAll(filepath.Join(root, DefaultStateDir), 0o700)
	for p, data := range map[string]string{
		"etc/daemoneye/daemoneye.yaml":        "log:\n  level: warn\n",
		"etc/daemoneye/rules/marker.yaml":     "old pack\n",
		"etc/daemoneye/rules/marker.yaml.sig": "old sig\n",
	} {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

func TestCreateVerifyApply(t *testing.T) {
	k := newKit(t)
	b := k.create("one.bundle", 10, k.standard("1.0.1", "debug"))

	op, err := VerifyFile(b, []ed25519.PublicKey{k.pub}, nil)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	m := op.Manifest
	if m.Format != Format || m.Sequence != 10 || m.Creator != "tester" || len(m.Files) != 4 || KeyID(op.Signer) != KeyID(k.pub) {
		t.Fatalf("manifest %+v signer %s", m, KeyID(op.Signer))
	}
	if m.Files[2].Mode != "0640" || m.Files[0].Mode != "0644" {
		t.Errorf("modes %s %s, want the kinds' defaults 0644 and 0640", m.Files[0].Mode, m.Files[2].Mode)
	}

	// The archive is an ordinary tar: the manifest first, then files/PATH.
	out, err := exec.Command("tar", "tf", b).Output()
	if err != nil {
		t.Fatalf("tar tf: %v", err)
	}
	wantTar := "MANIFEST.dsse.json\nfiles/etc/daemoneye/rules/marker.yaml\nfiles/etc/daemoneye/rules/marker.yaml.sig\nfiles/etc/daemoneye/daemoneye.yaml\nfiles/var/lib/daemoneye/agent/crl.pem\n"
	if string(out) != wantTar {
		t.Errorf("tar tf:\n%s\nwant\n%s", out, wantTar)
	}

	root := oldRoot(t)
	os.Chmod(filepath.Join(root, "etc/daemoneye/daemoneye.yaml"), 0o600)
	asRoot := os.Geteuid() == 0
	if asRoot {
		// Ownership: a replaced file keeps its owner, a new one takes its
		// directory's group.
		os.Chown(filepath.Join(root, "etc/daemoneye/daemoneye.yaml"), 1234, 5678)
		os.Chown(filepath.Join(root, "etc/daemoneye/rules"), 0, 4321)
		os.Remove(filepath.Join(root, "etc/daemoneye/rules/marker.yaml.sig"))
	}
	var asked *Plan
	o := k.opts(root)
	o.Role = "center"
	o.Confirm = func(p *Plan) bool { asked = p; return true }
	res, err := Apply(context.Background(), b, o)
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	if asked == nil || len(asked.Files) != 4 || !asked.Files[0].Exists || asked.Files[1].Exists != !asRoot || asked.Files[3].Exists {
		t.Errorf("confirm saw %+v", asked)
	}
	for _, s := range k.standard("1.0.1", "debug") {
		want, _ := os.ReadFile(s.Src)
		got, err := os.ReadFile(filepath.Join(root, s.Path))
		if err != nil || !bytes.Equal(got, want) {
			t.Errorf("%s after apply: %v, content differs: %v", s.Path, err, !bytes.Equal(got, want))
		}
	}
	if fi, _ := os.Stat(filepath.Join(root, "etc/daemoneye/daemoneye.yaml")); fi.Mode().Perm() != 0o640 {
		t.Errorf("config mode %v, want the manifest's 0640", fi.Mode().Perm())
	}
	owner := func(p string) [2]uint32 {
		fi, err := os.Stat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		return [2]uint32{st.Uid, st.Gid}
	}
	if asRoot {
		if got := owner("etc/daemoneye/daemoneye.yaml"); got != [2]uint32{1234, 5678} {
			t.Errorf("replaced config owned by %v, want the old file's 1234:5678", got)
		}
		if got := owner("etc/daemoneye/rules/marker.yaml.sig"); got != [2]uint32{0, 4321} {
			t.Errorf("new signature file owned by %v, want root and its directory's group 4321", got)
		}
	}
	if len(res.Checks) != 3 {
		t.Errorf("checks %q, want pack, config and CRL", res.Checks)
	}
	for _, want := range []string{"passes its check; signed by " + KeyID(k.rulesPub), "loads and validates", "signed by the CA"} {
		if !strings.Contains(strings.Join(res.Checks, "\n"), want) {
			t.Errorf("checks %q lack %q", res.Checks, want)
		}
	}
	// The replaced files are kept.
	if old, err := os.ReadFile(filepath.Join(res.Backup, "etc/daemoneye/daemoneye.yaml")); err != nil || string(old) != "log:\n  level: warn\n" {
		t.Errorf("backup of the old config: %q %v", old, err)
	}
	state := filepath.Join(root, DefaultStateDir)
	log, err := ReadApplied(state)
	if err != nil || len(log) != 1 || log[0].Digest != op.Digest || log[0].Sequence != 10 || len(log[0].Files) != 4 {
		t.Fatalf("applied log %+v %v", log, err)
	}
	// No staging or old-file links left beside the targets.
	if left, _ := filepath.Glob(filepath.Join(root, "etc/daemoneye/rules/.*")); len(left) > 0 {
		t.Errorf("left beside the targets: %q", left)
	}
	if _, err := os.Stat(filepath.Join(state, pendingFile)); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("journal left after a good apply: %v", err)
	}

	// The same bundle again: refused, unless forced.
	if _, err := Apply(context.Background(), b, k.opts(root)); !errors.Is(err, ErrAlreadyApplied) {
		t.Errorf("second apply of the same bundle: %v, want ErrAlreadyApplied", err)
	}
	o = k.opts(root)
	o.Force = true
	if _, err := Apply(context.Background(), b, o); err != nil {
		t.Errorf("forced re-apply: %v", err)
	}
	if log, _ := ReadApplied(state); len(log) != 2 || !log[1].Forced {
		t.Errorf("applied log after a forced apply: %+v", log)
	}
}

func TestApplyRefusesOlderAndOtherRole(t *testing.T) {
	k := newKit(t)
	newer := k.create("newer.bundle", 20, k.standard("2.0.0", "info"))
	older := k.create("older.bundle", 19, k.standard("1.9.0", "debug"))
	root := oldRoot(t)
	o := k.opts(root)
	o.Role = "proxy"
	if _, err := Apply(context.Background(), newer, o); !errors.Is(err, ErrRole) || !strings.Contains(err.Error(), "agent, center") {
		t.Errorf("apply to a proxy of a bundle for agent and center: %v, want ErrRole naming the targets", err)
	}
	if _, err := Apply(context.Background(), newer, k.opts(root)); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, root)
	_, err := Apply(context.Background(), older, k.opts(root))
	if !errors.Is(err, ErrRollback) || !strings.Contains(err.Error(), "sequence 19") || !strings.Contains(err.Error(), "sequence 20") {
		t.Fatalf("apply of an older bundle: %v, want ErrRollback naming both sequences", err)
	}
	sameTree(t, "after a refused older bundle", before, snapshot(t, root))
	o = k.opts(root)
	o.Force = true
	if _, err := Apply(context.Background(), older, o); err != nil {
		t.Errorf("forced apply of the older bundle: %v", err)
	}
	if b, _ := os.ReadFile(filepath.Join(root, "etc/daemoneye/daemoneye.yaml")); string(b) != "log:\n  level: debug\n" {
		t.Errorf("config after the forced older bundle: %q", b)
	}
}

// Each refusal names what is wrong and wraps the sentinel.
func TestVerifyRefuses(t *testing.T) {
	k := newKit(t)
	good := k.create("good.bundle", 5, k.standard("1.0.0", "info"))
	raw, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	otherPriv, otherPub := genKey(t, filepath.Join(k.dir, "other.key"))
	trusted := []ed25519.PublicKey{k.pub}
	verify := func(b []byte, keys []ed25519.PublicKey) error {
		_, err := Verify(bytes.NewReader(b), keys, nil)
		return err
	}
	if err := verify(raw, trusted); err != nil {
		t.Fatal(err)
	}
	// Offsets inside the archive: the manifest's content, a file's content.
	envAt := bytes.Index(raw, []byte(`{"payloadType"`))
	packAt := bytes.Index(raw, []byte("pack: customer-marker"))
	if envAt < 0 || packAt < 0 {
		t.Fatal("cannot find the manifest or the pack in the archive")
	}
	flip := func(at int) []byte {
		b := bytes.Clone(raw)
		b[at] ^= 0x01
		return b
	}
	payloadAt := bytes.Index(raw, []byte(`"payload":"`)) + len(`"payload":"`) + 10

	// A bundle signed by another key, and a signed manifest with bad paths.
	other := k.create("other.bundle", 5, k.standard("1.0.0", "info"))
	otherRaw, _ := os.ReadFile(other)
	_ = otherPriv

	cases := []struct {
		name string
		b    []byte
		keys []ed25519.PublicKey
		want error
		msg  string
	}{
		{"tampered file byte", flip(packAt + 3), trusted, ErrDigest, "etc/daemoneye/rules/marker.yaml has sha256"},
		{"tampered manifest byte", flip(payloadAt), trusted, ErrSignature, "modified after signing"},
		{"wrong key", raw, []ed25519.PublicKey{otherPub}, ErrSignature, "signed by key " + KeyID(k.pub)},
		{"no key", raw, nil, ErrSignature, "no trusted bundle key"},
		{"truncated in a file", raw[:packAt+10], trusted, ErrMalformed, "truncated inside etc/daemoneye/rules/marker.yaml"},
		{"truncated in the manifest", raw[:envAt+100], trusted, ErrMalformed, "truncated"},
		{"truncated between files", raw[:len(raw)-1024*2-512], trusted, ErrMalformed, "truncated"},
		{"empty", nil, trusted, ErrMalformed, "empty file"},
		{"not a tar", []byte("hello, this is not a bundle at all, just some text that goes on for a while...."), trusted, ErrMalformed, "not a bundle"},
		{"other key's bundle", otherRaw, []ed25519.PublicKey{otherPub}, ErrSignature, "trusted: " + KeyID(otherPub)},
	}
	for _, c := range cases {
		err := verify(c.b, c.keys)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want %v with %q", c.name, err, c.want, c.msg)
		}
	}
}

// Manifests a trusted key signed but that are unsafe or out of bounds are
// refused all the same.
func TestVerifyRefusesSignedBadManifests(t *testing.T) {
	k := newKit(t)
	base := func() Manifest {
		return Manifest{Format: Format, Created: time.Unix(1_800_000_000, 0).UTC(), Sequence: 7, Creator: "x", Targets: []string{"agent"},
			Files: []File{{Kind: KindConfig, Path: "etc/daemoneye/daemoneye.yaml", Size: 3, SHA256: sha256Hex([]byte("a: \n")[:3]), Mode: "0640"}}}
	}
	cases := []struct {
		name string
		edit func(*Manifest)
		want error
		msg  string
	}{
		{"traversal", func(m *Manifest) { m.Files[0].Path = "../../etc/shadow" }, ErrUnsafe, `"../../etc/shadow"`},
		{"traversal inside", func(m *Manifest) { m.Files[0].Path = "etc/../../x" }, ErrUnsafe, "not a clean path"},
		{"absolute", func(m *Manifest) { m.Files[0].Path = "/etc/passwd" }, ErrUnsafe, "absolute"},
		{"backslash", func(m *Manifest) { m.Files[0].Path = `etc\..\x` }, ErrUnsafe, "backslash"},
		{"control", func(m *Manifest) { m.Files[0].Path = "etc/a\nb" }, ErrUnsafe, "control"},
		{"duplicate", func(m *Manifest) { m.Files = append(m.Files, m.Files[0]) }, ErrMalformed, "appears twice"},
		{"file and dir", func(m *Manifest) {
			f := m.Files[0]
			f.Path = "etc/daemoneye/daemoneye.yaml/x"
			m.Files = append(m.Files, f)
		}, ErrMalformed, "is a file and a directory"},
		{"oversize", func(m *Manifest) { m.Files[0].Size = 2 << 20 }, ErrTooLarge, "a config file may have at most"},
		{"too many", func(m *Manifest) {
			for i := range MaxFiles {
				f := m.Files[0]
				f.Path = fmt.Sprintf("etc/x/%d", i)
				m.Files = append(m.Files, f)
			}
		}, ErrTooLarge, "files, at most"},
		{"unknown format", func(m *Manifest) { m.Format = "daemoneye-bundle/v2" }, ErrFormat, `"daemoneye-bundle/v2"`},
		{"unknown kind", func(m *Manifest) { m.Files[0].Kind = "script" }, ErrMalformed, `unknown kind "script"`},
		{"setuid", func(m *Manifest) { m.Files[0].Mode = "4755" }, ErrMalformed, "no setuid"},
		{"lone signature", func(m *Manifest) {
			m.Files[0].Kind = KindRulesSig
			m.Files[0].Path = "etc/x.yaml.sig"
			m.Files[0].Size = 3
		}, ErrMalformed, "rules-sig"},
		{"bad target", func(m *Manifest) { m.Targets = []string{"toaster"} }, ErrMalformed, `"toaster"`},
		{"no files", func(m *Manifest) { m.Files = nil }, ErrMalformed, "no files"},
	}
	for _, c := range cases {
		m := base()
		c.edit(&m)
		b := rawBundle(t, k.key, &m, nil)
		_, err := Verify(bytes.NewReader(b), []ed25519.PublicKey{k.pub}, nil)
		if !errors.Is(err, c.want) || !strings.Contains(err.Error(), c.msg) {
			t.Errorf("%s: %v, want %v with %q", c.name, err, c.want, c.msg)
		}
	}
	// The archive must hold exactly the manifest's files, in order.
	m := base()
	for name, members := range map[string][]member{
		"renamed member": {{"files/etc/other.yaml", []byte("a: ")}},
		"extra member":   {{"files/etc/daemoneye/daemoneye.yaml", []byte("a: ")}, {"files/extra", []byte("x")}},
		"missing member": {},
		"size differs":   {{"files/etc/daemoneye/daemoneye.yaml", []byte("a: b")}},
	} {
		b := rawBundle(t, k.key, &m, members)
		if _, err := Verify(bytes.NewReader(b), []ed25519.PublicKey{k.pub}, nil); err == nil {
			t.Errorf("%s: verified", name)
		} else {
			t.Logf("%s: %v", name, err)
		}
	}
}

func TestApplyBadTargets(t *testing.T) {
	k := newKit(t)
	b := k.create("b.bundle", 3, k.standard("1.0.0", "info"))
	root := oldRoot(t)
	cfg := filepath.Join(root, "etc/daemoneye/daemoneye.yaml")
	os.Remove(cfg)
	if err := os.Symlink("/etc/passwd", cfg); err != nil {
		t.Fatal(err)
	}
	before := snapshot(t, root)
	if _, err := Apply(context.Background(), b, k.opts(root)); !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("apply over a symlink: %v, want ErrUnsafe", err)
	}
	sameTree(t, "after refusing a symlink target", before, snapshot(t, root))

	// A file where the bundle needs a directory.
	root2 := t.TempDir()
	os.WriteFile(filepath.Join(root2, "etc"), []byte("x"), 0o644)
	if _, err := Apply(context.Background(), b, k.opts(root2)); !errors.Is(err, ErrUnsafe) || !strings.Contains(err.Error(), "not a directory") {
		t.Errorf("apply under a file: %v, want ErrUnsafe", err)
	}
}

// A check that fails after every file was swapped in puts every file back:
// the same content, modes and times; new files and directories go.
func TestApplyRollsBackFailedCheck(t *testing.T) {
	k := newKit(t)
	srcs := k.standard("3.0.0", "info")
	// A pack that parses but fails its fixtures.
	broken, _ := os.ReadFile(srcs[0].Src)
	broken = bytes.Replace(broken, []byte("pid: 200, start: 90}]"), []byte("pid: 999, start: 90}]"), 1)
	srcs[0].Src = k.write("broken.yaml", broken)
	k.write("broken.yaml.sig", rules.EncodeSignature(rules.Sign(broken, k.rulesKey)))
	srcs[1].Src = srcs[0].Src + ".sig"
	// Put the pack last so the other files are swapped and checked first.
	srcs = append(srcs[2:], srcs[0], srcs[1])
	b := k.create("broken.bundle", 30, srcs)

	root := oldRoot(t)
	before := snapshot(t, root)
	_, err := Apply(context.Background(), b, k.opts(root))
	if !errors.Is(err, ErrCheck) || !strings.Contains(err.Error(), "rules check") || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("apply with a pack failing its check: %v, want ErrCheck, rolled back", err)
	}
	sameTree(t, "after a failed check", before, snapshot(t, root))
	if log, _ := ReadApplied(filepath.Join(root, DefaultStateDir)); len(log) != 0 {
		t.Errorf("a rolled-back bundle was recorded: %+v", log)
	}

	// A configuration that does not validate.
	srcs = k.standard("3.0.1", "info")
	srcs[2].Src = k.write("bad.yaml", []byte("agent:\n  capture: teleport\n"))
	b = k.create("badcfg.bundle", 31, srcs)
	_, err = Apply(context.Background(), b, k.opts(root))
	if !errors.Is(err, ErrCheck) || !strings.Contains(err.Error(), "agent.capture") {
		t.Fatalf("apply with a bad config: %v, want ErrCheck naming the key", err)
	}
	sameTree(t, "after a config that does not validate", before, snapshot(t, root))

	// A CRL from another CA.
	ca2, _ := pki.Init(filepath.Join(k.dir, "pki2"), "other", 0)
	srcs = k.standard("3.0.2", "info")
	srcs[3].Src = k.write("crl2.pem", ca2.CRLPEM())
	b = k.create("badcrl.bundle", 32, srcs)
	if _, err = Apply(context.Background(), b, k.opts(root)); !errors.Is(err, ErrCheck) {
		t.Fatalf("apply with another CA's CRL: %v, want ErrCheck", err)
	}
	sameTree(t, "after a CRL of another CA", before, snapshot(t, root))

	// A pack signed by a key the node does not trust.
	srcs = k.standard("3.0.3", "info")
	data, _ := os.ReadFile(srcs[0].Src)
	other, _ := genKey(t, filepath.Join(k.dir, "other-rules.key"))
	srcs[1].Src = k.write("other.sig", rules.EncodeSignature(rules.Sign(data, other)))
	b = k.create("badsig.bundle", 33, srcs)
	if _, err = Apply(context.Background(), b, k.opts(root)); !errors.Is(err, ErrCheck) || !strings.Contains(err.Error(), "signature") {
		t.Fatalf("apply with a pack signed by another key: %v, want ErrCheck on the signature", err)
	}
	sameTree(t, "after a pack signed by another key", before, snapshot(t, root))
}

// A failure in the middle of the swaps (or of staging) leaves every file as
// it was.
func TestApplyRollsBackMidway(t *testing.T) {
	k := newKit(t)
	b := k.create("mid.bundle", 40, k.standard("4.0.0", "error"))
	for _, step := range []struct {
		name string
		at   int
	}{{"stage", 2}, {"swap", 0}, {"swap", 2}, {"swap", 3}, {"check", 1}} {
		root := oldRoot(t)
		before := snapshot(t, root)
		o := k.opts(root)
		boom := errors.New("injected failure")
		o.fault = func(s string, i int) error {
			if s == step.name && i == step.at {
				return boom
			}
			return nil
		}
		_, err := Apply(context.Background(), b, o)
		if !errors.Is(err, boom) {
			t.Fatalf("%s %d: %v, want the injected failure", step.name, step.at, err)
		}
		sameTree(t, fmt.Sprintf("after a failure at %s %d", step.name, step.at), before, snapshot(t, root))
		if _, err := os.Stat(filepath.Join(root, DefaultStateDir, pendingFile)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("%s %d: journal left: %v", step.name, step.at, err)
		}
		// The same bundle applies cleanly afterwards.
		if _, err := Apply(context.Background(), b, k.opts(root)); err != nil {
			t.Errorf("%s %d: apply after the rollback: %v", step.name, step.at, err)
		}
	}
}

// An apply that died between swaps (its journal is on disk) is undone by
// the next apply before it does anything else.
func TestApplyRecoversInterrupted(t *testing.T) {
	k := newKit(t)
	b := k.create("crash.bundle", 50, k.standard("5.0.0", "error"))
	op, err := VerifyFile(b, []ed25519.PublicKey{k.pub}, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		swapped  int
		linkNext bool // died between the next file's link and its rename
	}{{-1, false}, {0, true}, {1, true}, {3, false}, {4, false}} {
		root := oldRoot(t)
		before := snapshot(t, root)
		state := filepath.Join(root, DefaultStateDir)
		os.MkdirAll(state, 0o700)
		// Play an apply up to the crash point.
		plan := &Plan{Opened: op, Root: root}
		for _, f := range op.Manifest.Files {
			target := filepath.Join(root, filepath.FromSlash(f.Path))
			exists, _ := checkTarget(target)
			plan.Files = append(plan.Files, Planned{File: f, Target: target, Exists: exists})
		}
		j := newJournal(op, plan)
		if err := writeJournal(state, j); err != nil {
			t.Fatal(err)
		}
		if c.swapped < 0 { // died while staging: one file and its directory written
			os.MkdirAll(j.Dirs[0], 0o755)
			os.WriteFile(j.Entries[3].Staged, []byte("half"), 0o600)
		} else if err := stage(b, k.opts(root), plan, j); err != nil {
			t.Fatal(err)
		}
		for _, e := range j.Entries[:max(c.swapped, 0)] {
			if err := swap(e); err != nil {
				t.Fatal(err)
			}
		}
		if c.linkNext {
			if err := os.Link(j.Entries[c.swapped].Target, j.Entries[c.swapped].Old); err != nil {
				t.Fatal(err)
			}
		}
		// The next apply recovers first, then (here) is declined.
		o := k.opts(root)
		var recovered string
		o.Confirm = func(*Plan) bool { return false }
		var out bytes.Buffer
		o.Out = &out
		_, err := Apply(context.Background(), b, o)
		if !errors.Is(err, ErrDeclined) {
			t.Fatalf("crash after %d swaps: apply: %v, want ErrDeclined", c.swapped, err)
		}
		recovered = out.String()
		if !strings.Contains(recovered, "interrupted apply of bundle "+short(op.Digest)) {
			t.Errorf("crash after %d swaps: output %q does not report the recovery", c.swapped, recovered)
		}
		sameTree(t, fmt.Sprintf("after recovering a crash after %d swaps", c.swapped), before, snapshot(t, root))
		if _, err := os.Stat(filepath.Join(state, pendingFile)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("crash after %d swaps: journal left after recovery: %v", c.swapped, err)
		}
		if _, err := Apply(context.Background(), b, k.opts(root)); err != nil {
			t.Errorf("crash after %d swaps: apply after recovery: %v", c.swapped, err)
		}
	}
}

// An apply that died after its commit point is finished, not undone, by
// the next apply: recorded once, the old files moved to the backups.
func TestApplyFinishesCommitted(t *testing.T) {
	k := newKit(t)
	b := k.create("c.bundle", 90, k.standard("9.0.0", "debug"))
	root := oldRoot(t)
	state := filepath.Join(root, DefaultStateDir)
	o := k.opts(root)
	crash := errors.New("killed")
	o.fault = func(step string, i int) error {
		if step == "commit" {
			return crash
		}
		return nil
	}
	if _, err := Apply(context.Background(), b, o); !errors.Is(err, crash) {
		t.Fatalf("apply: %v", err)
	}
	if log, _ := ReadApplied(state); len(log) != 0 {
		t.Fatalf("recorded before the crash was finished: %+v", log)
	}
	after := snapshot(t, root) // the new files, and the old ones' links beside them
	newer := k.create("d.bundle", 91, k.standard("9.0.1", "info"))
	o = k.opts(root)
	var out bytes.Buffer
	o.Out = &out
	o.Confirm = func(*Plan) bool { return false }
	if _, err := Apply(context.Background(), newer, o); !errors.Is(err, ErrDeclined) {
		t.Fatalf("next apply: %v", err)
	}
	if !strings.Contains(out.String(), "had committed") {
		t.Errorf("output %q does not say the earlier apply was finished", out.String())
	}
	now := snapshot(t, root)
	for p, v := range after {
		if strings.Contains(p, ".bundle-old-") {
			if _, ok := now[p]; ok {
				t.Errorf("old file link %s left beside its target", p)
			}
			continue
		}
		if now[p] != v {
			t.Errorf("%s changed while finishing the commit: %q -> %q", p, v, now[p])
		}
	}
	log, err := ReadApplied(state)
	if err != nil || len(log) != 1 || log[0].Sequence != 90 || log[0].Backup == "" {
		t.Fatalf("applied log after finishing: %+v %v", log, err)
	}
	if old, err := os.ReadFile(filepath.Join(state, log[0].Backup, "etc/daemoneye/daemoneye.yaml")); err != nil || string(old) != "log:\n  level: warn\n" {
		t.Errorf("backup of the replaced config: %q %v", old, err)
	}
}

// The binary of a bundle must run: a real daemoneye build is applied and
// answers --version; a file that cannot run is rolled back.
func TestApplyBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the daemoneye binary")
	}
	k := newKit(t)
	bin := filepath.Join(k.dir, "daemoneye")
	build := exec.Command("go", "build", "-trimpath", "-ldflags", "-X main.version=7.7.7", "-o", bin, "github.com/evilbitlabs/daemoneye")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	root := oldRoot(t)
	os.MkdirAll(filepath.Join(root, "usr/local/bin"), 0o755)
	oldBin := []byte("#!/bin/sh\necho daemoneye 1.0.0\n")
	os.WriteFile(filepath.Join(root, "usr/local/bin/daemoneye"), oldBin, 0o755)

	srcs := append(k.standard("6.0.0", "info"), Source{Kind: KindBinary, Src: bin, Path: "usr/local/bin/daemoneye"})
	b := k.create("bin.bundle", 60, srcs)
	var progress bytes.Buffer
	o := k.opts(root)
	o.Progress = func(step string, f File, done int64) {
		if done == f.Size && f.Size > 4<<20 {
			fmt.Fprintf(&progress, "%s %s: %d of %d (100%%)\n", step, f.Path, done, f.Size)
		}
	}
	res, err := Apply(context.Background(), b, o)
	if err != nil {
		t.Fatalf("apply with the binary: %v", err)
	}
	if !strings.Contains(strings.Join(res.Checks, "\n"), "runs: daemoneye 7.7.7") {
		t.Errorf("checks %q: want the new binary's version", res.Checks)
	}
	for _, want := range []string{"verify usr/local/bin/daemoneye: ", "stage usr/local/bin/daemoneye: ", "(100%)"} {
		if !strings.Contains(progress.String(), want) {
			t.Errorf("progress lacks %q:\n%s", want, progress.String())
		}
	}
	if fi, _ := os.Stat(filepath.Join(root, "usr/local/bin/daemoneye")); fi.Mode().Perm() != 0o755 {
		t.Errorf("binary mode %v", fi.Mode())
	}

	// Garbage where the binary should be: exec fails, nothing changes.
	before := snapshot(t, root)
	srcs = append(k.standard("6.0.1", "info"), Source{Kind: KindBinary, Src: k.write("junk", bytes.Repeat([]byte{0x7f, 'E', 'L', 'F', 0}, 100)), Path: "usr/local/bin/daemoneye"})
	b = k.create("junk.bundle", 61, srcs)
	_, err = Apply(context.Background(), b, k.opts(root))
	if !errors.Is(err, ErrCheck) || !strings.Contains(err.Error(), "--version") {
		t.Fatalf("apply with a binary that does not run: %v, want ErrCheck on --version", err)
	}
	sameTree(t, "after a binary that does not run", before, snapshot(t, root))
}

func TestApplyLocked(t *testing.T) {
	k := newKit(t)
	b := k.create("l.bundle", 70, k.standard("7.0.0", "info"))
	root := oldRoot(t)
	state := filepath.Join(root, DefaultStateDir)
	os.MkdirAll(state, 0o700)
	f, err := flock.TryLock(filepath.Join(state, lockFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := Apply(context.Background(), b, k.opts(root)); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "another bundle apply") {
		t.Errorf("apply while locked: %v", err)
	}
}

func TestReadAppliedRefusesDamage(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, appliedLog), []byte(`{"digest":"ab","sequence":3}`+"\nnot json\n"), 0o600)
	if _, err := ReadApplied(dir); !errors.Is(err, ErrState) || !strings.Contains(err.Error(), "line 2") {
		t.Errorf("damaged log: %v, want ErrState naming line 2", err)
	}
}

// member is a raw archive member for hand-made bundles.
type member struct {
	name string
	data []byte
}

// rawBundle signs m as is (no validation) and writes the archive with the
// given members (nil: the manifest's files, filled with "a: ").
func rawBundle(t testing.TB, key ed25519.PrivateKey, m *Manifest, members []member) []byte {
	t.Helper()
	payload, err := json.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return rawArchive(t, signedEnvelope(t, key, payload), m, members)
}

// immutable makes dir unwritable even for root (chattr +i; ext4 and most
// disk file systems), until the returned function or the test's end.
func immutable(t *testing.T, dir string) func() {
	t.Helper()
	if out, err := exec.Command("chattr", "+i", dir).CombinedOutput(); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("chattr +i %s: %v %s", dir, err, out)
		}
		t.Skipf("cannot make a directory immutable here: %v %s", err, out)
	}
	undo := func() { exec.Command("chattr", "-i", dir).Run() }
	t.Cleanup(undo)
	return undo
}

// A target directory that cannot be written (as root: the immutable
// attribute) makes the apply fail for real: while staging, nothing is left;
// in the middle of the swaps, the files already swapped are put back at
// once, and what cannot be removed yet (a staged file in that directory) is
// finished by the next apply, from the journal.
func TestApplyReadOnlyDir(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI is set and this test needs root (chattr +i)")
		}
		t.Skip("needs root: chattr +i")
	}
	k := newKit(t)
	b := k.create("ro.bundle", 80, k.standard("8.0.0", "error"))

	// While staging: the rules directory refuses the first staged file.
	root := oldRoot(t)
	before := snapshot(t, root)
	unlock := immutable(t, filepath.Join(root, "etc/daemoneye/rules"))
	_, err := Apply(context.Background(), b, k.opts(root))
	if err == nil || !strings.Contains(err.Error(), "operation not permitted") || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("apply into a read-only directory: %v, want a refusal, rolled back", err)
	}
	unlock()
	sameTree(t, "after a read-only directory refused staging", before, snapshot(t, root))

	// In the middle of the swaps: the CRL's directory turns read-only once
	// everything is staged, so the last swap fails after three went in.
	root = oldRoot(t)
	before = snapshot(t, root)
	crlDir := filepath.Join(root, "var/lib/daemoneye/agent")
	o := k.opts(root)
	o.fault = func(step string, i int) error {
		if step == "stage" && i == 3 {
			immutable(t, crlDir)
		}
		return nil
	}
	_, err = Apply(context.Background(), b, o)
	if err == nil || !strings.Contains(err.Error(), "operation not permitted") || !strings.Contains(err.Error(), "ROLLBACK INCOMPLETE") {
		t.Fatalf("apply with a directory turned read-only: %v, want the failed swap and an incomplete rollback", err)
	}
	// What could be put back is back already.
	now := snapshot(t, root)
	for _, p := range []string{"etc/daemoneye/daemoneye.yaml", "etc/daemoneye/rules/marker.yaml", "etc/daemoneye/rules/marker.yaml.sig"} {
		if now[p] != before[p] {
			t.Errorf("%s not restored at once: %q, was %q", p, now[p], before[p])
		}
	}
	exec.Command("chattr", "-i", crlDir).Run()
	o = k.opts(root)
	o.Confirm = func(*Plan) bool { return false }
	if _, err := Apply(context.Background(), b, o); !errors.Is(err, ErrDeclined) {
		t.Fatalf("next apply: %v", err)
	}
	sameTree(t, "after the next apply finished the rollback", before, snapshot(t, root))
	if _, err := Apply(context.Background(), b, k.opts(root)); err != nil {
		t.Errorf("apply once the directory is writable again: %v", err)
	}
}
