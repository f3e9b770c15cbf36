package wire

import (
	"crypto/ed25519"
	"crypto/tls"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// traceCA is a customer CA with an operator, a center and an agent.
type traceCA struct {
	ca                    *pki.CA
	v                     *pki.Verifier
	alice, center, agentK *tls.Certificate
	alicePEM              []byte
}

func newTraceCA(t testing.TB, org string) *traceCA {
	t.Helper()
	ca, err := pki.Init(filepath.Join(t.TempDir(), "ca"), org, 0)
	if err != nil {
		t.Fatal(err)
	}
	issue := func(role pki.Role, name string) (*tls.Certificate, []byte) {
		c, k, err := ca.Issue(role, name, pki.IssueOptions{})
		if err != nil {
			t.Fatal(err)
		}
		kp, err := pki.KeyPair(c, k)
		if err != nil {
			t.Fatal(err)
		}
		return kp, c
	}
	tc := &traceCA{ca: ca}
	tc.alice, tc.alicePEM = issue(pki.RoleOperator, "alice")
	tc.center, _ = issue(pki.RoleCenter, "center-1")
	tc.agentK, _ = issue(pki.RoleAgent, "web-1")
	if tc.v, err = ca.Verifier(); err != nil {
		t.Fatal(err)
	}
	return tc
}

func keyOf(c *tls.Certificate) ed25519.PrivateKey { return c.PrivateKey.(ed25519.PrivateKey) }

func startCmd(now time.Time) TraceCommand {
	return TraceCommand{TraceID: "tr-0001", Action: TraceStart, TargetAgent: "web-1", TargetPID: 4242, TargetStart: 99,
		Depth: 3, CollectFiles: true, CollectNetwork: true, MaxDurationSecs: 600, InitiatedBy: "alice",
		Timestamp: now.UnixNano(), Reason: "apache spawned bash"}
}

func stamp(t testing.TB, tc *traceCA, s *SignedTrace, now time.Time) {
	t.Helper()
	if err := s.Approve(TraceApproval{Policy: "analyst", Time: now.UnixNano(), Expires: now.Add(10 * time.Minute).UnixNano()},
		keyOf(tc.center), tc.center.Certificate[0]); err != nil {
		t.Fatal(err)
	}
}

func encode(t testing.TB, s *SignedTrace) []byte {
	t.Helper()
	b, err := s.Encode()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestTraceCommandRoundTrip(t *testing.T) {
	tc := newTraceCA(t, "Acme")
	now := time.Now()
	s, err := SignTrace(startCmd(now), keyOf(tc.alice), tc.alice.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	// The center checks the operator's signature before stamping.
	if v, err := VerifyTrace(encode(t, s), tc.v, TraceCheck{Now: now}); err != nil || v.Signer != "alice" || v.Center != "" {
		t.Fatalf("unstamped verify = %+v, %v", v, err)
	}
	if _, err := VerifyTrace(encode(t, s), tc.v, TraceCheck{Now: now, RequireApproval: true}); !errors.Is(err, ErrTraceApproval) {
		t.Fatalf("agent check of an unstamped command = %v, want ErrTraceApproval", err)
	}
	stamp(t, tc, s, now)
	v, err := VerifyTrace(encode(t, s), tc.v, TraceCheck{Now: now, RequireApproval: true})
	if err != nil {
		t.Fatal(err)
	}
	if v.Command != startCmd(now) || v.Signer != "alice" || v.SignerRole != pki.RoleOperator || v.Center != "center-1" || v.Approval.Policy != "analyst" {
		t.Fatalf("verified = %+v", v)
	}
}

// Every refusal the agent must make, each with the sentinel it branches on.
func TestTraceCommandRefusals(t *testing.T) {
	tc := newTraceCA(t, "Acme")
	other := newTraceCA(t, "Evil")
	now := time.Now()
	good := func() *SignedTrace {
		s, err := SignTrace(startCmd(now), keyOf(tc.alice), tc.alice.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		stamp(t, tc, s, now)
		return s
	}
	resign := func(cmd TraceCommand, signer *tls.Certificate) *SignedTrace {
		s, err := SignTrace(cmd, keyOf(signer), signer.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		stamp(t, tc, s, now)
		return s
	}
	cases := []struct {
		name  string
		b     func() []byte
		check TraceCheck
		want  error
	}{
		{"bad command signature", func() []byte { s := good(); s.Signature[3] ^= 1; return encode(t, s) }, TraceCheck{}, ErrTraceSignature},
		{"command changed after signing", func() []byte {
			s := good()
			c := startCmd(now)
			c.TargetPID = 1 // trace init instead
			s.Command, _ = encMode.Marshal(&c)
			return encode(t, s)
		}, TraceCheck{}, ErrTraceSignature},
		{"operator of another CA", func() []byte {
			s, _ := SignTrace(startCmd(now), keyOf(other.alice), other.alice.Certificate[0])
			stamp(t, tc, s, now)
			return encode(t, s)
		}, TraceCheck{}, ErrTraceSigner},
		{"signer is not initiated_by", func() []byte { c := startCmd(now); c.InitiatedBy = "bob"; return encode(t, resign(c, tc.alice)) }, TraceCheck{}, ErrTraceSigner},
		{"signed by an agent", func() []byte { return encode(t, resign(startCmd(now), tc.agentK)) }, TraceCheck{}, ErrTraceSigner},
		{"center signs for an operator", func() []byte { return encode(t, resign(startCmd(now), tc.center)) }, TraceCheck{}, ErrTraceSigner},
		{"expired timestamp", func() []byte {
			c := startCmd(now.Add(-25 * time.Hour))
			return encode(t, resign(c, tc.alice))
		}, TraceCheck{}, ErrTraceExpired},
		{"timestamp from the future", func() []byte { return encode(t, resign(startCmd(now.Add(time.Hour)), tc.alice)) }, TraceCheck{}, ErrTraceMalformed},
		{"no stamp", func() []byte {
			s := good()
			s.Approval, s.CenterCert, s.CenterSig = nil, nil, nil
			return encode(t, s)
		}, TraceCheck{}, ErrTraceApproval},
		{"stamp for another command", func() []byte {
			a := good()
			c := startCmd(now)
			c.TraceID = "tr-0002"
			b := resign(c, tc.alice)
			a.Approval, a.CenterCert, a.CenterSig = b.Approval, b.CenterCert, b.CenterSig
			return encode(t, a)
		}, TraceCheck{}, ErrTraceApproval},
		{"stamp signature broken", func() []byte { s := good(); s.CenterSig[0] ^= 1; return encode(t, s) }, TraceCheck{}, ErrTraceApproval},
		{"stamp by an operator", func() []byte {
			s := good()
			if err := s.Approve(TraceApproval{Policy: "analyst", Time: now.UnixNano(), Expires: now.Add(time.Minute).UnixNano()},
				keyOf(tc.alice), tc.alice.Certificate[0]); err != nil {
				t.Fatal(err)
			}
			return encode(t, s)
		}, TraceCheck{}, ErrTraceApproval},
		{"stamp expired", func() []byte { return encode(t, good()) }, TraceCheck{Now: now.Add(11 * time.Minute)}, ErrTraceExpired},
		{"garbage", func() []byte { return []byte{0xa1, 0x01, 0x02} }, TraceCheck{}, ErrTraceMalformed},
		{"oversized", func() []byte { return make([]byte, maxTraceEnvelope+1) }, TraceCheck{}, ErrTraceMalformed},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			chk := c.check
			if chk.Now.IsZero() {
				chk.Now = now
			}
			chk.RequireApproval = true
			_, err := VerifyTrace(c.b(), tc.v, chk)
			if !errors.Is(err, c.want) {
				t.Fatalf("VerifyTrace = %v, want %v", err, c.want)
			}
		})
	}

	// Revoked: the CRL reaches the agent, then the same command is refused.
	s := good()
	alice, _ := pki.ParseCertificatePEM(tc.alicePEM)
	if err := tc.ca.Revoke(alice.SerialNumber, 1); err != nil {
		t.Fatal(err)
	}
	if err := tc.v.SetCRL(tc.ca.CRL()); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyTrace(encode(t, s), tc.v, TraceCheck{Now: now, RequireApproval: true}); !errors.Is(err, ErrTraceSigner) || !errors.Is(err, pki.ErrRevoked) {
		t.Fatalf("revoked operator: %v, want ErrTraceSigner wrapping pki.ErrRevoked", err)
	}
}

// What the center may sign itself: a rule's trace, a stop, a fan-out; and
// an operator's start only where the agent allows it.
func TestTraceCenterSigned(t *testing.T) {
	tc := newTraceCA(t, "Acme")
	now := time.Now()
	for _, c := range []struct {
		mod   func(*TraceCommand)
		allow bool
		ok    bool
	}{
		{func(c *TraceCommand) { c.InitiatedBy = "rule:web-shell" }, false, true},
		{func(c *TraceCommand) { c.Action = TraceStop }, false, true},
		{func(c *TraceCommand) { c.FollowOf = 7 }, false, true},
		{func(c *TraceCommand) {}, false, false},
		{func(c *TraceCommand) {}, true, true},
	} {
		cmd := startCmd(now)
		c.mod(&cmd)
		s, err := SignTrace(cmd, keyOf(tc.center), tc.center.Certificate[0])
		if err != nil {
			t.Fatal(err)
		}
		stamp(t, tc, s, now)
		_, err = VerifyTrace(encode(t, s), tc.v, TraceCheck{Now: now, RequireApproval: true, CenterSignedForOperator: c.allow})
		if (err == nil) != c.ok {
			t.Errorf("center-signed %+v (allow %v): err %v, want ok %v", cmd, c.allow, err, c.ok)
		}
	}
}

func TestTraceCommandValidate(t *testing.T) {
	now := time.Now()
	for _, mod := range []func(*TraceCommand){
		func(c *TraceCommand) { c.TraceID = "" },
		func(c *TraceCommand) { c.TraceID = "a/b" },
		func(c *TraceCommand) { c.TraceID = string(make([]byte, 65)) },
		func(c *TraceCommand) { c.TargetAgent = "" },
		func(c *TraceCommand) { c.TargetPID = 0 },
		func(c *TraceCommand) { c.Depth = MaxTraceDepth + 1 },
		func(c *TraceCommand) { c.Action = 9 },
		func(c *TraceCommand) { c.InitiatedBy = "" },
		func(c *TraceCommand) { c.Timestamp = 0 },
	} {
		c := startCmd(now)
		mod(&c)
		if err := c.Validate(); !errors.Is(err, ErrTraceMalformed) {
			t.Errorf("Validate(%+v) = %v, want ErrTraceMalformed", c, err)
		}
	}
	_, key, _ := ed25519.GenerateKey(nil)
	tc := newTraceCA(t, "Acme")
	if _, err := SignTrace(startCmd(now), key, tc.alice.Certificate[0]); err == nil {
		t.Error("SignTrace with a key that is not the certificate's succeeded")
	}
}

// FuzzTraceCommand: whatever arrives as a command payload, VerifyTrace
// returns a wrapped sentinel and never panics.
func FuzzTraceCommand(f *testing.F) {
	tc := newTraceCA(f, "Acme")
	now := time.Now()
	s, err := SignTrace(startCmd(now), keyOf(tc.alice), tc.alice.Certificate[0])
	if err != nil {
		f.Fatal(err)
	}
	f.Add(encode(f, s))
	stamp(f, tc, s, now)
	f.Add(encode(f, s))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, b []byte) {
		_, err := VerifyTrace(b, tc.v, TraceCheck{Now: now, RequireApproval: true})
		if err == nil {
			return
		}
		for _, e := range []error{ErrTraceMalformed, ErrTraceSigner, ErrTraceSignature, ErrTraceApproval, ErrTraceExpired} {
			if errors.Is(err, e) {
				return
			}
		}
		t.Fatalf("error wraps no sentinel: %v", err)
	})
}

// TestWriteTraceFuzzCorpus writes FuzzTraceCommand's committed seeds when
// WIRE_WRITE_CORPUS=1 (signed by a throwaway CA: they exercise the decoder
// and the refusal paths).
func TestWriteTraceFuzzCorpus(t *testing.T) {
	if os.Getenv("WIRE_WRITE_CORPUS") != "1" {
		t.Skip("set WIRE_WRITE_CORPUS=1 to regenerate testdata/fuzz")
	}
	tc := newTraceCA(t, "Acme")
	now := time.Now()
	s, _ := SignTrace(startCmd(now), keyOf(tc.alice), tc.alice.Certificate[0])
	unstamped := encode(t, s)
	stamp(t, tc, s, now)
	dir := filepath.Join("testdata", "fuzz", "FuzzTraceCommand")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"unstamped": unstamped, "stamped": encode(t, s), "dup-key": {0xa2, 0x01, 0x40, 0x01, 0x40}} {
		if err := os.WriteFile(filepath.Join(dir, name), fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
