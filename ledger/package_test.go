package ledger

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/json"
	"errors"
	"math/big"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/mod/sumdb/note"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

const pkgTrace = "T-20261124-001"

// node is an identity issued by a test CA.
type node struct {
	key  ed25519.PrivateKey
	cert []byte // DER
}

func issue(t testing.TB, ca *pki.CA, role pki.Role, name string) node {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(role, name, pki.IssueOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return node{key: c.PrivateKey.(ed25519.PrivateKey), cert: c.Certificate[0]}
}

// pkgEnv is a customer CA with a center, two agents, an operator and a
// real ledger, and the pieces of one trace's package.
type pkgEnv struct {
	t        testing.TB
	ca, ca2  *pki.CA
	center   node
	agents   map[string]node
	operator node
	ledger   *Ledger
	vkey     string
	now      time.Time
	in       PackageInput
	// eventLeaves are the ledger indexes of the trace.event entries.
	eventLeaves []int64
}

func newPkgEnv(t testing.TB) *pkgEnv {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.Init(filepath.Join(dir, "ca"), "Acme", 0)
	if err != nil {
		t.Fatal(err)
	}
	ca2, err := pki.Init(filepath.Join(dir, "ca2"), "Other", 0)
	if err != nil {
		t.Fatal(err)
	}
	e := &pkgEnv{t: t, ca: ca, ca2: ca2, now: time.Now().Truncate(time.Millisecond)}
	e.center = issue(t, ca, pki.RoleCenter, "center")
	e.agents = map[string]node{"web-1": issue(t, ca, pki.RoleAgent, "web-1"), "db-1": issue(t, ca, pki.RoleAgent, "db-1")}
	e.operator = issue(t, ca, pki.RoleOperator, "ana")
	skey, vkey, err := note.GenerateKey(rand.Reader, Origin("center"))
	if err != nil {
		t.Fatal(err)
	}
	signer, err := note.NewSigner(skey)
	if err != nil {
		t.Fatal(err)
	}
	e.vkey = vkey
	e.ledger, err = Open(filepath.Join(dir, "ledger"), signer, nil, Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.ledger.Close() })
	e.in = PackageInput{TraceID: pkgTrace, ExportedAt: e.now, VerifierKey: vkey,
		Metadata: []byte(`{"trace_id":"` + pkgTrace + `","host":"web-1","pid":4242,"state":"active","initiated_by":"ana"}`)}
	e.in.Command = e.command(pkgTrace)

	// web-1: trace_seq 1..5 in two batches among baseline events, and a
	// batch of baseline events only; db-1 (reached by a follow): 1..3.
	e.in.Batches = [][]byte{
		e.seal("web-1", 7, e.baseline(2), e.traced(1, capture.KindExec), e.baseline(1), e.traced(2, capture.KindExecHash), e.traced(3, capture.KindConnect)),
		e.seal("web-1", 9, e.traced(4, capture.KindFileOpen), e.baseline(1), e.traced(5, capture.KindExit)),
		e.seal("db-1", 3, e.traced(1, capture.KindAccept), e.traced(2, capture.KindExec), e.traced(3, capture.KindExit)),
	}
	e.record(KindLogin, "ana", `{"role":"analyst"}`)
	e.record("api.trace_request", "ana", `{"trace_id":"`+pkgTrace+`","host":"web-1","pid":4242}`)
	e.record("api.view", "vic", `{"count":1}`)
	e.eventLeaves = e.recordEvents(e.in.Batches...)
	e.record(KindExport, "ana", `{"trace_id":"`+pkgTrace+`","auth":"certificate"}`)
	e.prove(append([]int64{1}, append(e.eventLeaves, e.ledger.Size()-1)...)...)
	return e
}

// recordEvents appends a trace.event leaf for each trace event of the
// batches, as the center does when it ingests them.
func (e *pkgEnv) recordEvents(batches ...[]byte) []int64 {
	e.t.Helper()
	var idx []int64
	for _, sealed := range batches {
		der, err := wire.PeekCert(sealed)
		if err != nil {
			e.t.Fatal(err)
		}
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			e.t.Fatal(err)
		}
		b, err := wire.OpenBatch(sealed, cert.PublicKey.(ed25519.PublicKey), wire.Limits{})
		if err != nil {
			e.t.Fatal(err)
		}
		for i, ev := range b.Events {
			if ev.TraceID == "" {
				continue
			}
			sum := sha256.Sum256(b.EventCBOR(i))
			p, _ := json.Marshal(map[string]any{"trace_id": ev.TraceID, "trace_seq": ev.TraceSeq, "host": b.AgentID, "batch_seq": b.Seq,
				"idx": i, "kind": ev.Kind.String(), "event_sha256": hex.EncodeToString(sum[:])})
			idx = append(idx, e.record(KindTraceEvent, "agent:"+b.AgentID, string(p)))
		}
	}
	return idx
}

// useBatches makes the package's batches these, as if the center had
// received only them: their trace.event leaves and a new export entry are
// what the package proves.
func (e *pkgEnv) useBatches(batches ...[]byte) {
	e.t.Helper()
	e.in.Batches = batches
	e.eventLeaves = e.recordEvents(batches...)
	exp := e.record(KindExport, "ana", `{"trace_id":"`+pkgTrace+`"}`)
	e.prove(append([]int64{1}, append(e.eventLeaves, exp)...)...)
}

func (e *pkgEnv) record(kind, actor, payload string) int64 {
	e.t.Helper()
	i, err := e.ledger.Append(Entry{Kind: kind, Actor: actor, Time: e.now, Payload: []byte(payload)})
	if err != nil {
		e.t.Fatal(err)
	}
	return i
}

func (e *pkgEnv) prove(indexes ...int64) {
	e.t.Helper()
	cp, entries, err := ProveEntries(e.ledger, indexes)
	if err != nil {
		e.t.Fatal(err)
	}
	e.in.Checkpoint, e.in.Entries = cp, entries
}

func (e *pkgEnv) command(traceID string) []byte {
	e.t.Helper()
	cmd := wire.TraceCommand{TraceID: traceID, Action: wire.TraceStart, TargetAgent: "web-1", TargetPID: 4242, TargetStart: 99,
		Depth: 4, InitiatedBy: "ana", Timestamp: e.now.UnixNano(), Reason: "apache spawned a shell"}
	st, err := wire.SignTrace(cmd, e.operator.key, e.operator.cert)
	if err != nil {
		e.t.Fatal(err)
	}
	if err := st.Approve(wire.TraceApproval{Policy: "analyst", Time: e.now.UnixNano(), Expires: e.now.Add(10 * time.Minute).UnixNano()},
		e.center.key, e.center.cert); err != nil {
		e.t.Fatal(err)
	}
	b, err := st.Encode()
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *pkgEnv) baseline(n int) []capture.Event {
	out := make([]capture.Event, n)
	for i := range out {
		out[i] = capture.Event{Time: e.now.UnixNano(), Kind: capture.KindExec, Proc: capture.ProcKey{PID: uint32(100 + i), Start: 7},
			Exec: &capture.Exec{Exe: "/usr/bin/cron", Argv: []string{"cron"}}, Source: "ebpf"}
	}
	return out
}

func (e *pkgEnv) traced(seq uint64, kind capture.Kind) []capture.Event {
	ev := capture.Event{Time: e.now.UnixNano() + int64(seq), Kind: kind, Proc: capture.ProcKey{PID: 4242, Start: 99},
		Source: "ebpf", TraceID: pkgTrace, TraceSeq: seq}
	switch kind {
	case capture.KindExec:
		ev.Exec = &capture.Exec{Exe: "/bin/bash", Argv: []string{"bash", "-c", "id"}}
	case capture.KindExecHash:
		ev.Hashes = &capture.Hashes{Path: "/bin/bash", SHA256: strings.Repeat("ab", 32), Blake3: strings.Repeat("cd", 32), Size: 1234}
	case capture.KindFileOpen:
		ev.File = &capture.FileOp{Path: "/etc/shadow", Result: 3}
	case capture.KindExit:
		ev.Exit = &capture.Exit{Code: 0}
	}
	return []capture.Event{ev}
}

func (e *pkgEnv) seal(agent string, seq uint64, parts ...[]capture.Event) []byte {
	e.t.Helper()
	return e.sealWith(e.agents[agent], agent, seq, parts...)
}

func (e *pkgEnv) sealWith(n node, agent string, seq uint64, parts ...[]capture.Event) []byte {
	e.t.Helper()
	var evs []capture.Event
	for _, p := range parts {
		evs = append(evs, p...)
	}
	b, err := wire.SealBatchCert(agent, seq, evs, n.key, n.cert, true)
	if err != nil {
		e.t.Fatal(err)
	}
	return b
}

func (e *pkgEnv) signer() PackageSigner {
	return PackageSigner{Key: e.center.key, Chain: [][]byte{e.center.cert}}
}

func (e *pkgEnv) build() []byte {
	e.t.Helper()
	b, err := BuildPackage(e.in, e.signer())
	if err != nil {
		e.t.Fatalf("BuildPackage: %v", err)
	}
	return b
}

func (e *pkgEnv) verify(b []byte) (PackageReport, error) {
	return VerifyPackage(b, e.ca.Certificate())
}

func TestPackageRoundTrip(t *testing.T) {
	e := newPkgEnv(t)
	b := e.build()
	rep, err := e.verify(b)
	if err != nil {
		t.Fatalf("VerifyPackage of a fresh package: %v", err)
	}
	if rep.TraceID != pkgTrace || rep.Center != "center" || !rep.ExportedAt.Equal(e.now) {
		t.Errorf("trace %q center %q exported %v, want %q center %v", rep.TraceID, rep.Center, rep.ExportedAt, pkgTrace, e.now)
	}
	if rep.Events != 8 || rep.Batches != 3 {
		t.Errorf("proved %d events in %d batches, want 8 in 3", rep.Events, rep.Batches)
	}
	if len(rep.Hosts) != 2 || rep.Hosts[0].Host != "db-1" || rep.Hosts[0].Events != 3 || rep.Hosts[1].Host != "web-1" ||
		rep.Hosts[1].Events != 5 || rep.Hosts[1].Batches != 2 || rep.Hosts[1].LastTraceSeq != 5 || len(rep.Hosts[1].Missing) != 0 {
		t.Errorf("hosts = %+v, want db-1 with 3 events and web-1 with 5 in 2 batches, nothing missing", rep.Hosts)
	}
	if len(rep.Hosts[1].Agents) != 1 {
		t.Errorf("web-1 signed by %v, want one certificate", rep.Hosts[1].Agents)
	}
	if len(rep.Artifacts) != 1 || rep.Artifacts[0].Path != "/bin/bash" || rep.Artifacts[0].SHA256 != strings.Repeat("ab", 32) {
		t.Errorf("artifacts = %+v, want the hash of /bin/bash", rep.Artifacts)
	}
	if len(rep.Actions) != 10 || rep.Actions[0].Kind != "api.trace_request" || rep.Export.Index != 11 || rep.Export.Actor != "ana" {
		t.Errorf("actions = %+v, export %+v; want the trace request, 8 trace events and the export by ana (entry 11)", rep.Actions, rep.Export)
	}
	if rep.EventsInLedger != 8 {
		t.Errorf("%d events matched by ledger entries, want 8", rep.EventsInLedger)
	}
	if rep.Checkpoint.Origin != Origin("center") || rep.Checkpoint.Size != 12 {
		t.Errorf("checkpoint %s size %d, want %s size 12", rep.Checkpoint.Origin, rep.Checkpoint.Size, Origin("center"))
	}
	if rep.Command == nil || rep.Command.Signer != "ana" || rep.Command.Center != "center" || rep.Command.Policy != "analyst" {
		t.Errorf("command = %+v, want signed by ana, stamped by center", rep.Command)
	}
	// The same input builds the same bytes (a package has one encoding).
	if again := e.build(); !bytes.Equal(again, b) {
		t.Error("building the same package twice gave different bytes")
	}
}

// A center that never received some of a host's events says so, and the
// verifier reports them as not proven.
func TestPackageDeclaresMissingEvents(t *testing.T) {
	e := newPkgEnv(t)
	e.useBatches(e.in.Batches[0], e.in.Batches[2], // web-1 seq 9 (trace_seq 4, 5) never arrived...
		e.seal("web-1", 11, e.traced(6, capture.KindExit))) // ...but 6 did
	rep, err := e.verify(e.build())
	if err != nil {
		t.Fatalf("VerifyPackage: %v", err)
	}
	web := rep.Hosts[1]
	if web.Host != "web-1" || web.Events != 4 || len(web.Missing) != 1 || web.Missing[0] != (SeqRange{4, 5}) {
		t.Errorf("web-1 = %+v, want 4 events with trace_seq 4-5 declared missing", web)
	}
}

// A trace whose agent has sent nothing yet still exports: the package
// proves the operator actions and says there are no events.
func TestPackageWithoutEvents(t *testing.T) {
	e := newPkgEnv(t)
	e.useBatches()
	rep, err := e.verify(e.build())
	if err != nil {
		t.Fatalf("VerifyPackage: %v", err)
	}
	if rep.Events != 0 || len(rep.Hosts) != 0 || rep.Batches != 0 || rep.Export.Kind != KindExport {
		t.Errorf("report %+v, want no events, hosts or batches and the export record", rep)
	}
}

// Certificates are judged when they were used: a package of batches whose
// day-long agent certificates expired weeks ago still verifies, and one
// whose events fall outside the certificate's life does not.
func TestPackageOldCertificates(t *testing.T) {
	e := newPkgEnv(t)
	now := e.now
	rootKey, root := mintCertKey(t, nil, nil, "", "Old CA", now.Add(-365*24*time.Hour), now.Add(365*24*time.Hour))
	centerKey, centerCert := mintCertKey(t, root, rootKey, pki.RoleCenter, "center", now.Add(-time.Hour), now.Add(time.Hour))
	agentKey, agentCert := mintCertKey(t, root, rootKey, pki.RoleAgent, "web-1", now.Add(-31*24*time.Hour), now.Add(-30*24*time.Hour))
	old := node{key: agentKey, cert: agentCert.Raw}
	e.in.Command = nil
	sign := PackageSigner{Key: centerKey, Chain: [][]byte{centerCert.Raw}}

	e.now = now.Add(-30*24*time.Hour - time.Hour) // inside the agent certificate's day
	e.useBatches(e.sealWith(old, "web-1", 7, e.traced(1, capture.KindExec), e.traced(2, capture.KindExecHash)))
	b, err := BuildPackage(e.in, sign)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyPackage(b, root); err != nil {
		t.Fatalf("package with a batch signed under a since-expired certificate: %v", err)
	}

	e.now = now.Add(-29 * 24 * time.Hour) // after it expired
	e.useBatches(e.sealWith(old, "web-1", 7, e.traced(1, capture.KindExec), e.traced(2, capture.KindExecHash)))
	if b, err = BuildPackage(e.in, sign); err != nil {
		t.Fatal(err)
	}
	_, err = VerifyPackage(b, root)
	if !errors.Is(err, ErrBatchSignature) || !strings.Contains(err.Error(), "batch web-1/7: agent certificate at") || !strings.Contains(err.Error(), "expired") {
		t.Errorf("batch sealed after its certificate expired: %v, want ErrBatchSignature saying it expired", err)
	}
}

// mintCertKey makes a certificate with a validity window of the test's
// choosing (the CA's Issue always starts now); with parent nil, a root.
func mintCertKey(t testing.TB, parent *x509.Certificate, parentKey ed25519.PrivateKey, role pki.Role, name string, from, to time.Time) (ed25519.PrivateKey, *x509.Certificate) {
	t.Helper()
	pub, key, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: from, NotAfter: to, KeyUsage: x509.KeyUsageDigitalSignature, BasicConstraintsValid: true}
	if parent == nil {
		tmpl.IsCA, tmpl.KeyUsage = true, x509.KeyUsageCertSign|x509.KeyUsageCRLSign
		parent, parentKey = tmpl, key
	} else {
		tmpl.URIs = []*url.URL{pki.IdentityURI(role, name)}
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, pub, parentKey)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, c
}

// decoded is a package opened for a test to change and sign again, as the
// center (or whoever holds its key) could.
type decoded struct {
	file    pkgFile
	st      statement
	members map[string][]byte
}

func decodePkg(t testing.TB, b []byte) *decoded {
	t.Helper()
	p, err := parsePackage(b)
	if err != nil {
		t.Fatal(err)
	}
	return &decoded{file: p.file, st: p.st, members: p.members}
}

// encode writes d back with the members and statement as they are now,
// signed by key (nil: keep the old envelope, as a forger without the key).
func (d *decoded) encode(t testing.TB, key ed25519.PrivateKey) []byte {
	t.Helper()
	d.file.Members = nil
	var subjects []subject
	names := make([]string, 0, len(d.members))
	for name := range d.members {
		names = append(names, name)
	}
	sortStrings(names)
	for _, name := range names {
		sum := sha256.Sum256(d.members[name])
		subjects = append(subjects, subject{Name: name, Digest: map[string]string{"sha256": hex.EncodeToString(sum[:])}})
		d.file.Members = append(d.file.Members, pkgMember{Name: name, Data: d.members[name]})
	}
	if key != nil {
		d.st.Subject = subjects
		payload, err := json.Marshal(d.st)
		if err != nil {
			t.Fatal(err)
		}
		env := dsseEnvelope{PayloadType: PayloadTypeInToto, Payload: payload,
			Signatures: []dsseSignature{{KeyID: "k", Sig: ed25519.Sign(key, pae(PayloadTypeInToto, payload))}}}
		if d.file.Envelope, err = json.Marshal(env); err != nil {
			t.Fatal(err)
		}
	}
	b, err := pkgEnc.Marshal(&d.file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func sortStrings(s []string) {
	for i := 1; i < len(s); i++ {
		for j := i; j > 0 && s[j] < s[j-1]; j-- {
			s[j], s[j-1] = s[j-1], s[j]
		}
	}
}

func (d *decoded) events(t testing.TB) []pkgEvent {
	t.Helper()
	var evs []pkgEvent
	if err := pkgDec.Unmarshal(d.members[MemberEvents], &evs); err != nil {
		t.Fatal(err)
	}
	return evs
}

func (d *decoded) setEvents(t testing.TB, evs []pkgEvent) {
	t.Helper()
	b, err := pkgEnc.Marshal(evs)
	if err != nil {
		t.Fatal(err)
	}
	d.members[MemberEvents] = b
}

// wantFail checks that b fails with reason and that the message names
// what failed (every fragment in order).
func wantFail(t testing.TB, e *pkgEnv, b []byte, reason error, fragments ...string) {
	t.Helper()
	_, err := e.verify(b)
	if err == nil {
		t.Fatalf("verified; want %v naming %q", reason, fragments)
	}
	if !errors.Is(err, reason) || !errors.Is(err, ErrTampered) {
		t.Errorf("error %q is not %v and ErrTampered", err, reason)
	}
	var pe *PackageError
	if !errors.As(err, &pe) {
		t.Errorf("error %q is not a *PackageError", err)
	}
	msg := err.Error()
	for _, f := range fragments {
		i := strings.Index(msg, f)
		if i < 0 {
			t.Errorf("error %q does not say %q", err, f)
			return
		}
		msg = msg[i+len(f):]
	}
}

// Tampering with the file after the center signed it.
func TestPackageTamperFile(t *testing.T) {
	e := newPkgEnv(t)
	good := e.build()
	evs := decodePkg(t, good).events(t)

	t.Run("change one event byte", func(t *testing.T) {
		d := decodePkg(t, good)
		evs := d.events(t)
		i := bytes.Index(evs[6].Event, []byte("/etc/shadow")) // web-1 trace_seq 4
		evs[6].Event[i+1] = 'E'                               // /Etc/shadow
		d.setEvents(t, evs)
		wantFail(t, e, d.encode(t, nil), ErrPackageDigest, "member events.cbor", "does not match the signed digest")
	})
	t.Run("change one byte in place", func(t *testing.T) {
		// The path is in the (compressed) batch and in the event list;
		// whichever holds it first is named.
		b := bytes.Clone(good)
		i := bytes.Index(b, []byte("/etc/shadow"))
		b[i+1] = 'E'
		wantFail(t, e, b, ErrPackageDigest, "member ", "does not match the signed digest")
	})
	t.Run("change a batch byte", func(t *testing.T) {
		d := decodePkg(t, good)
		m := d.members["batches/web-1/9"]
		m[len(m)/2] ^= 0x40
		wantFail(t, e, d.encode(t, nil), ErrPackageDigest, "member batches/web-1/9", "does not match")
	})
	t.Run("drop one event", func(t *testing.T) {
		d := decodePkg(t, good)
		d.setEvents(t, append(evs[:3:3], evs[4:]...))
		wantFail(t, e, d.encode(t, nil), ErrPackageDigest, "member events.cbor")
	})
	t.Run("drop a batch", func(t *testing.T) {
		d := decodePkg(t, good)
		delete(d.members, "batches/web-1/9")
		wantFail(t, e, d.encode(t, nil), ErrPackageDigest, "member batches/web-1/9", "signed but missing")
	})
	t.Run("reorder two events", func(t *testing.T) {
		d := decodePkg(t, good)
		evs := d.events(t)
		evs[3], evs[4] = evs[4], evs[3]
		d.setEvents(t, evs)
		wantFail(t, e, d.encode(t, nil), ErrPackageDigest, "member events.cbor")
	})
	t.Run("reorder two members", func(t *testing.T) {
		d := decodePkg(t, good)
		d.file.Members[0], d.file.Members[1] = d.file.Members[1], d.file.Members[0]
		b, _ := pkgEnc.Marshal(&d.file)
		wantFail(t, e, b, ErrPackageMalformed, "out of order")
	})
	t.Run("add a member", func(t *testing.T) {
		d := decodePkg(t, good)
		d.members["notes.txt"] = []byte("nothing to see")
		wantFail(t, e, d.encode(t, nil), ErrPackageDigest, "member notes.txt", "not in the signed statement")
	})
	t.Run("swap the signature", func(t *testing.T) {
		// The signature of another genuine package by the same center.
		other := newPkgEnv(t)
		other.center, other.ca = e.center, e.ca
		other.in.Metadata = []byte(`{"trace_id":"` + pkgTrace + `","note":"another export"}`)
		od := decodePkg(t, other.build())
		d := decodePkg(t, good)
		var env, oenv dsseEnvelope
		json.Unmarshal(d.file.Envelope, &env)
		json.Unmarshal(od.file.Envelope, &oenv)
		env.Signatures = oenv.Signatures
		d.file.Envelope, _ = json.Marshal(env)
		b, _ := pkgEnc.Marshal(&d.file)
		wantFail(t, e, b, ErrPackageSignature, "signature", "does not verify with the key of certificate")
	})
	t.Run("flip a signature bit", func(t *testing.T) {
		d := decodePkg(t, good)
		var env dsseEnvelope
		json.Unmarshal(d.file.Envelope, &env)
		env.Signatures[0].Sig[5] ^= 1
		d.file.Envelope, _ = json.Marshal(env)
		b, _ := pkgEnc.Marshal(&d.file)
		wantFail(t, e, b, ErrPackageSignature, "does not verify")
	})
	t.Run("swap the center certificate", func(t *testing.T) {
		d := decodePkg(t, good)
		d.file.Certs = [][]byte{issue(t, e.ca, pki.RoleCenter, "center").cert}
		b, _ := pkgEnc.Marshal(&d.file)
		wantFail(t, e, b, ErrPackageSignature, "does not verify")
	})
	t.Run("truncate", func(t *testing.T) {
		for _, n := range []int{len(good) - 1, len(good) / 2, 10, 0} {
			wantFail(t, e, good[:n], ErrPackageMalformed, "package", "truncated")
		}
	})
	t.Run("trailing bytes", func(t *testing.T) {
		wantFail(t, e, append(bytes.Clone(good), 0), ErrPackageMalformed, "package")
	})
}

// Tampering by whoever holds the center's key (or a center that lies):
// the agents' signatures and the ledger still catch it.
func TestPackageTamperResigned(t *testing.T) {
	e := newPkgEnv(t)
	good := e.build()
	key := e.center.key

	t.Run("change one event byte in its batch", func(t *testing.T) {
		d := decodePkg(t, good)
		// Re-seal the batch with the changed event under another key, as
		// a forger must: the agent's signature no longer verifies.
		forged := e.sealWith(node{key: e.center.key, cert: e.agents["web-1"].cert}, "web-1", 9,
			e.traced(4, capture.KindFileOpen), e.baseline(1), e.traced(5, capture.KindExit))
		d.members["batches/web-1/9"] = forged
		wantFail(t, e, d.encode(t, key), ErrBatchSignature, "batch web-1/9", "agent signature does not verify")
	})
	t.Run("change one event byte in the list", func(t *testing.T) {
		d := decodePkg(t, good)
		evs := d.events(t)
		i := bytes.Index(evs[6].Event, []byte("/etc/shadow"))
		evs[6].Event[i+1] = 'E'
		d.setEvents(t, evs)
		wantFail(t, e, d.encode(t, key), ErrEventProof, "event web-1/seq 9/idx 0", "merkle proof does not match batch root")
	})
	t.Run("drop one event", func(t *testing.T) {
		d := decodePkg(t, good)
		evs := d.events(t)
		d.setEvents(t, append(evs[:4:4], evs[5:]...)) // web-1 trace_seq 2
		wantFail(t, e, d.encode(t, key), ErrEventSequence, "event web-1/seq 7/idx 4", "trace_seq 2", "not listed")
	})
	t.Run("drop a batch without declaring it", func(t *testing.T) {
		e := newPkgEnv(t)
		e.useBatches(e.in.Batches[0], e.in.Batches[2], e.seal("web-1", 11, e.traced(6, capture.KindExit)))
		d := decodePkg(t, e.build())
		d.st.Predicate.Hosts[1].Missing = nil
		wantFail(t, e, d.encode(t, e.center.key), ErrEventSequence, "host web-1", "trace_seq 4-5 missing", "declared missing: none")
	})
	t.Run("drop a batch the ledger recorded", func(t *testing.T) {
		// Even declared missing, a batch the center received and
		// recorded event by event in its ledger cannot be left out.
		e := newPkgEnv(t)
		e.in.Batches = [][]byte{e.in.Batches[0], e.in.Batches[2]}
		wantFail(t, e, e.build(), ErrEventSequence, "ledger entry 6", "records event web-1/seq 9/idx 0 (trace_seq 4)", "which the package lacks")
	})
	t.Run("ledger records another event", func(t *testing.T) {
		e := newPkgEnv(t)
		d := decodePkg(t, e.build())
		// Swap in a batch 9 whose events differ from what the ledger
		// recorded (the agent did sign it: a second batch 9 would be a
		// replay the center refuses; the ledger shows which it received).
		other := e.seal("web-1", 9, e.traced(4, capture.KindFileOpen), e.traced(5, capture.KindExit))
		d.members["batches/web-1/9"] = other
		evs := d.events(t)
		ob, _ := wire.OpenBatch(other, e.agents["web-1"].key.Public().(ed25519.PublicKey), wire.Limits{})
		for k := range evs {
			if evs[k].Host == "web-1" && evs[k].BatchSeq == 9 {
				j := 0
				if evs[k].TraceSeq == 5 {
					j = 1
				}
				evs[k].Idx, evs[k].Event = j, ob.EventCBOR(j)
				proof, _ := ob.EventProof(j)
				evs[k].Proof = nil
				for _, h := range proof {
					evs[k].Proof = append(evs[k].Proof, bytes.Clone(h[:]))
				}
			}
		}
		d.setEvents(t, evs)
		wantFail(t, e, d.encode(t, e.center.key), ErrEventSequence, "ledger entry 7", "records event web-1/seq 9/idx 2 (trace_seq 5)", "lacks")
	})
	t.Run("reorder two events", func(t *testing.T) {
		d := decodePkg(t, good)
		evs := d.events(t)
		evs[3], evs[4] = evs[4], evs[3]
		d.setEvents(t, evs)
		wantFail(t, e, d.encode(t, key), ErrEventSequence, "event web-1/seq 7/idx 2", "trace_seq 1 of web-1 is listed after web-1 trace_seq 2")
	})
	t.Run("swap the places of two events", func(t *testing.T) {
		d := decodePkg(t, good)
		evs := d.events(t)
		a, b := &evs[3], &evs[4]
		a.BatchSeq, a.Idx, a.Event, a.Proof, b.BatchSeq, b.Idx, b.Event, b.Proof = b.BatchSeq, b.Idx, b.Event, b.Proof, a.BatchSeq, a.Idx, a.Event, a.Proof
		d.setEvents(t, evs)
		wantFail(t, e, d.encode(t, key), ErrEventSequence, "event web-1/seq 7/idx 4", "signed trace_seq is 2, the package lists it as 1")
	})
	t.Run("claim more events", func(t *testing.T) {
		d := decodePkg(t, good)
		d.st.Predicate.Events++
		wantFail(t, e, d.encode(t, key), ErrPackageClaim, "statement", "claims 9 events")
	})
	t.Run("change an operator action", func(t *testing.T) {
		d := decodePkg(t, good)
		var ents []pkgEntry
		pkgDec.Unmarshal(d.members[MemberEntries], &ents)
		ents[0].Payload = bytes.Replace(ents[0].Payload, []byte(`"ana"`), []byte(`"eve"`), 1)
		ents[0].Payload = bytes.Replace(ents[0].Payload, []byte("4242"), []byte("4243"), 1)
		d.members[MemberEntries], _ = pkgEnc.Marshal(ents)
		wantFail(t, e, d.encode(t, key), ErrLedgerProof, "ledger entry 1", "payload does not match its leaf")
	})
	t.Run("drop the export record", func(t *testing.T) {
		e := newPkgEnv(t)
		e.prove(1)
		wantFail(t, e, e.build(), ErrNoExportRecord, "ledger", `no "export" entry`)
	})
	t.Run("checkpoint by another key", func(t *testing.T) {
		e := newPkgEnv(t)
		skey, vkey, _ := note.GenerateKey(rand.Reader, Origin("center"))
		s, _ := note.NewSigner(skey)
		other, err := Open(t.TempDir(), s, nil, Options{})
		if err != nil {
			t.Fatal(err)
		}
		defer other.Close()
		other.Append(Entry{Kind: KindExport, Actor: "ana", Payload: []byte(`{"trace_id":"` + pkgTrace + `"}`)})
		cp, _, err := ProveEntries(other, nil)
		if err != nil {
			t.Fatal(err)
		}
		e.in.Checkpoint = cp // signed by another key than the one named
		wantFail(t, e, e.build(), ErrLedgerProof, "checkpoint", "not signed by "+Origin("center"))
		e.in.VerifierKey = vkey // a key that signed it, but proofs of another tree
		wantFail(t, e, e.build(), ErrLedgerProof, "ledger entry 1", "not in the checkpoint's tree")
	})
	t.Run("verifier key of another center", func(t *testing.T) {
		e := newPkgEnv(t)
		_, vkey, _ := note.GenerateKey(rand.Reader, Origin("elsewhere"))
		e.in.VerifierKey = vkey
		wantFail(t, e, e.build(), ErrLedgerProof, "ledger/verifier.vkey", `key of "daemoneye.center/elsewhere"`)
	})
	t.Run("batch signed by another CA", func(t *testing.T) {
		e := newPkgEnv(t)
		rogue := issue(t, e.ca2, pki.RoleAgent, "web-1")
		e.in.Batches[1] = e.sealWith(rogue, "web-1", 9, e.traced(4, capture.KindFileOpen), e.traced(5, capture.KindExit))
		wantFail(t, e, e.build(), ErrBatchSignature, "batch web-1/9", "agent certificate", "another CA")
	})
	t.Run("batch signed by another agent", func(t *testing.T) {
		e := newPkgEnv(t)
		e.in.Batches[1] = e.sealWith(e.agents["db-1"], "web-1", 9, e.traced(4, capture.KindFileOpen), e.traced(5, capture.KindExit))
		wantFail(t, e, e.build(), ErrBatchSignature, "batch web-1/9", "certificate of db-1")
	})
	t.Run("batch signed by a center", func(t *testing.T) {
		e := newPkgEnv(t)
		e.in.Batches[1] = e.sealWith(e.center, "web-1", 9, e.traced(4, capture.KindFileOpen), e.traced(5, capture.KindExit))
		wantFail(t, e, e.build(), ErrBatchSignature, "batch web-1/9", "wrong role")
	})
	t.Run("center certificate from another CA", func(t *testing.T) {
		e := newPkgEnv(t)
		rogue := issue(t, e.ca2, pki.RoleCenter, "center")
		b, err := BuildPackage(e.in, PackageSigner{Key: rogue.key, Chain: [][]byte{rogue.cert}})
		if err != nil {
			t.Fatal(err)
		}
		wantFail(t, e, b, ErrPackageSigner, "signer", "center certificate", "another CA")
	})
	t.Run("signed by an agent", func(t *testing.T) {
		e := newPkgEnv(t)
		a := e.agents["web-1"]
		b, err := BuildPackage(e.in, PackageSigner{Key: a.key, Chain: [][]byte{a.cert}})
		if err != nil {
			t.Fatal(err)
		}
		wantFail(t, e, b, ErrPackageSigner, "signer", "wrong role")
	})
	t.Run("command of another trace", func(t *testing.T) {
		e := newPkgEnv(t)
		e.in.Command = e.command("T-other")
		wantFail(t, e, e.build(), ErrTraceCommand, "command.cbor", `trace "T-other"`)
	})
	t.Run("command signature", func(t *testing.T) {
		e := newPkgEnv(t)
		e.in.Command[len(e.in.Command)-3] ^= 1 // inside the center's stamp signature
		wantFail(t, e, e.build(), ErrTraceCommand, "command.cbor")
	})
}

// Inputs a center must not sign.
func TestBuildPackageRefuses(t *testing.T) {
	e := newPkgEnv(t)
	cases := map[string]func(in *PackageInput) PackageSigner{
		"metadata of another trace": func(in *PackageInput) PackageSigner {
			in.Metadata = []byte(`{"trace_id":"T-2"}`)
			return e.signer()
		},
		"a batch without the trace": func(in *PackageInput) PackageSigner {
			in.Batches = append(in.Batches, e.seal("web-1", 8, e.baseline(3)))
			return e.signer()
		},
		"a batch twice": func(in *PackageInput) PackageSigner {
			in.Batches = append(in.Batches, in.Batches[0])
			return e.signer()
		},
		"key of another certificate": func(in *PackageInput) PackageSigner {
			return PackageSigner{Key: e.agents["web-1"].key, Chain: [][]byte{e.center.cert}}
		},
	}
	for name, mk := range cases {
		t.Run(name, func(t *testing.T) {
			in := e.in
			in.Batches = append([][]byte(nil), e.in.Batches...)
			s := mk(&in)
			if _, err := BuildPackage(in, s); err == nil {
				t.Error("BuildPackage accepted it")
			}
		})
	}
}

func TestVerifyPackageNeedsCA(t *testing.T) {
	e := newPkgEnv(t)
	b := e.build()
	if _, err := VerifyPackage(b, nil); err == nil {
		t.Error("verified without a CA")
	}
	leaf, _ := x509.ParseCertificate(e.center.cert)
	if _, err := VerifyPackage(b, leaf); err == nil {
		t.Error("verified with a leaf certificate as the CA")
	}
	if _, err := VerifyPackage(b, e.ca2.Certificate()); !errors.Is(err, ErrPackageSigner) {
		t.Errorf("verify against another CA = %v, want ErrPackageSigner", err)
	}
}
