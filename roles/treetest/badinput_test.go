package treetest

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// rogue is a peer that speaks the protocol by hand.
type rogue struct {
	t *testing.T
	l *transport.Link
}

// dialRogue connects with the identity in tls and says hello as role/name.
func dialRogue(t *testing.T, addr string, id *transport.Identity, role wire.Role) (*rogue, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	l, err := transport.Dial(ctx, addr, id.ClientTLS(), transport.Options{MaxFrame: 64 << 20})
	if err != nil {
		return nil, err
	}
	r := &rogue{t: t, l: l}
	r.frame(transport.LaneControl, wire.Hello{NodeID: id.Name, Role: role, Version: transport.ProtocolVersion, Hops: []string{id.Name}, Agents: []string{id.Name}})
	// Wait for the hello answer so a refusal is seen as an error.
	ack := make(chan error, 1)
	go l.Receive(transport.LaneControl, func(b []byte) error {
		f, err := wire.DecodeFrame(b, wire.DefaultLimits())
		if err == nil {
			if h, ok := f.(*wire.HelloAck); ok && h.Code != wire.HelloOK {
				err = errors.New(h.Reason)
			}
		}
		select {
		case ack <- err:
		default:
		}
		return nil
	})
	select {
	case err := <-ack:
		if err != nil {
			l.Close()
			return nil, err
		}
	case <-l.Done():
		return nil, l.Err()
	case <-ctx.Done():
		l.Close()
		return nil, ctx.Err()
	}
	t.Cleanup(func() { l.Close() })
	return r, nil
}

func (r *rogue) frame(lane transport.Lane, f wire.Frame) {
	b, err := wire.AppendFrame(nil, f)
	if err != nil {
		r.t.Fatal(err)
	}
	if err := r.l.Send(context.Background(), lane, b[4:]); err != nil {
		r.t.Logf("rogue send: %v", err)
	}
}

func identity(t *testing.T, tr *Tree, role pki.Role, name string) *transport.Identity {
	tc := tr.Issue(role, name)
	id, err := transport.LoadIdentity(tc.Cert, tc.Key, tc.CA, "")
	if err != nil {
		t.Fatal(err)
	}
	return id
}

func events(n int) []capture.Event {
	evs := make([]capture.Event, n)
	for i := range evs {
		evs[i] = capture.Event{Time: int64(i + 1), Kind: capture.KindExec, Proc: capture.ProcKey{PID: uint32(i + 100), Start: 1},
			Exec: &capture.Exec{Exe: "/bin/x", Argv: []string{"x"}}}
	}
	return evs
}

// Bad input reaches a live proxy from rogue peers while a good agent keeps
// streaming. Each attempt is refused and counted; the good agent's batches
// all arrive, once. Tried here: a batch signed with a key that is not its
// certificate's, a replayed batch (through a rogue proxy), an agent sending
// another agent's batch, peers from another CA, revoked and expired, an
// oversized frame and a malformed frame. (Zstd bombs and fuzzed frames are
// refused in transport/wire's tests and fuzz targets.)
func TestBadInputWhileServing(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center").Start()
	px := tr.NewProxy("px", c.Cfg.Listen).Start()
	good := tr.NewAgent("good", px.Cfg.Listen).Start()
	stop := make(chan struct{})
	streamed := make(chan struct{})
	go func() {
		defer close(streamed)
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
				good.Emit(200)
			}
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
	}()
	ctx := context.Background()

	// 1. Bad signature: web-x's certificate, someone else's key.
	webx := identity(t, tr, pki.RoleAgent, "web-x")
	r, err := dialRogue(t, px.Cfg.Listen, webx, wire.RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	_, otherKey, _ := ed25519.GenerateKey(rand.Reader)
	forged, err := wire.SealBatchCert("web-x", 1, events(10), otherKey, webx.CertDER(), true)
	if err != nil {
		t.Fatal(err)
	}
	r.frame(transport.LaneBulk, wire.BatchFrame{Lane: wire.LaneBulk, Sealed: forged})

	// 2. An agent sending another agent's batch is refused by the proxy.
	stolen, _ := wire.SealBatchCert("good", 999, events(5), webx.Key(), webx.CertDER(), true)
	r.frame(transport.LaneBulk, wire.BatchFrame{Lane: wire.LaneBulk, Sealed: stolen})

	// 3. A replay: a batch the center already has, sent again through a
	// rogue (but enrolled) proxy.
	var old []byte
	var ok bool
	for deadline := time.Now().Add(20 * time.Second); !ok && time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		old, ok, err = c.Ingest.Batch("good", 1)
	}
	if err != nil || !ok {
		t.Fatalf("stored batch 1 of good: %v %v", ok, err)
	}
	evil := identity(t, tr, pki.RoleProxy, "px-evil")
	rp, err := dialRogue(t, c.Cfg.Listen, evil, wire.RoleProxy)
	if err != nil {
		t.Fatal(err)
	}
	rp.frame(transport.LaneBulk, wire.BatchFrame{Lane: wire.LaneBulk, Sealed: old})

	// 4. Handshakes refused: another CA, revoked, expired.
	other := New(t)
	if _, err := dialRogue(t, px.Cfg.Listen, identity(t, other, pki.RoleAgent, "stranger"), wire.RoleAgent); err == nil {
		t.Error("a peer from another CA got a link")
	}
	revokedTLS := tr.Issue(pki.RoleAgent, "revoked")
	pem, _ := os.ReadFile(revokedTLS.Cert)
	if err := tr.CA.RevokeCert(pem, pki.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	revoked, _ := transport.LoadIdentity(revokedTLS.Cert, revokedTLS.Key, revokedTLS.CA, "")
	var refusedRevoked bool
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		// The center pushes the new CRL down; once the proxy has it, the
		// revoked agent is refused.
		if _, err := dialRogue(t, px.Cfg.Listen, revoked, wire.RoleAgent); err != nil {
			refusedRevoked = true
			break
		}
	}
	if !refusedRevoked {
		t.Error("the revoked agent was never refused: the CRL did not reach the proxy")
	}
	tr.CA.Now = func() time.Time { return time.Now().Add(-48 * time.Hour) }
	oldTLS := tr.Issue(pki.RoleAgent, "old")
	tr.CA.Now = nil
	// LoadIdentity refuses a node's own expired certificate; a rogue does not care.
	oldCert, err := pki.LoadKeyPair(oldTLS.Cert, oldTLS.Key)
	if err != nil {
		t.Fatal(err)
	}
	oldV, _ := pki.LoadVerifier(oldTLS.CA, "")
	expired := &transport.Identity{Holder: pki.NewCertHolder(oldCert), Verifier: oldV, Role: pki.RoleAgent, Name: "old"}
	if _, err := dialRogue(t, px.Cfg.Listen, expired, wire.RoleAgent); err == nil {
		t.Error("an expired certificate got a link")
	}

	// 5. Oversized and malformed frames end only the rogue's link.
	big, err := dialRogue(t, px.Cfg.Listen, identity(t, tr, pki.RoleAgent, "big"), wire.RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	big.l.Send(ctx, transport.LaneBulk, make([]byte, 5<<20))
	junk, err := dialRogue(t, px.Cfg.Listen, identity(t, tr, pki.RoleAgent, "junk"), wire.RoleAgent)
	if err != nil {
		t.Fatal(err)
	}
	junk.l.Send(ctx, transport.LaneBulk, []byte{0xff, 0x00, 0x13, 0x37})
	for _, x := range []*rogue{big, junk} {
		select {
		case <-x.l.Done():
		case <-time.After(10 * time.Second):
			t.Error("the proxy kept a link that sent an oversized or malformed frame")
		}
	}

	// The good agent kept going through all of it.
	time.Sleep(300 * time.Millisecond)
	close(stop)
	<-streamed
	if m := WaitAll(c, 30*time.Second, good); m != "" {
		t.Fatalf("good agent after the attacks: %s", m)
	}
	checkExact(t, c, good)

	waitCount := func(what string, get func() uint64) {
		t.Helper()
		for deadline := time.Now().Add(10 * time.Second); get() == 0; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Errorf("%s was never counted", what)
				return
			}
		}
	}
	waitCount("the forged signature", func() uint64 { return c.Ingest.Rejected()["bad_signature"] })
	waitCount("the replay", func() uint64 { _, _, r := c.Ingest.Counts(); return r })
	stored, _ := c.Ingest.Stored()
	if len(stored["web-x"]) != 0 {
		t.Errorf("the center stored web-x's forged batch: %v", stored["web-x"])
	}
	for _, s := range stored["good"] {
		if s == 999 {
			t.Error("the center stored the batch web-x sent in good's name")
		}
	}
	if !strings.Contains(strings.Join(px.Below(), ","), "px") {
		t.Errorf("proxy lost its own id: %v", px.Below())
	}
}
