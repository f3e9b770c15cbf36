package transport

import (
	"bytes"
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// pair returns two connected links over loopback QUIC with mutual TLS.
func pair(t *testing.T, client, server Options) (*Link, *Link) {
	t.Helper()
	cliTLS, srvTLS := testTLS(t)
	ln, err := Listen("127.0.0.1:0", srvTLS, server)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	accepted := make(chan *Link, 1)
	go func() {
		l, err := ln.Accept(ctx)
		if err != nil {
			t.Error(err)
		}
		accepted <- l
	}()
	c, err := Dial(ctx, ln.Addr(), cliTLS, client)
	if err != nil {
		t.Fatal(err)
	}
	s := <-accepted
	if s == nil {
		t.FailNow()
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	return c, s
}

func TestLinkLanesCarryFramesInOrder(t *testing.T) {
	c, s := pair(t, Options{}, Options{})
	ctx := context.Background()
	const n = 200
	for i := 0; i < n; i++ {
		for _, ln := range []Lane{LaneTrace, LaneAlert, LaneBulk, LaneControl} {
			f := make([]byte, 8+i*97)
			binary.BigEndian.PutUint64(f, uint64(i))
			if err := c.Send(ctx, ln, f); err != nil {
				t.Fatal(err)
			}
		}
	}
	var wg sync.WaitGroup
	for _, ln := range []Lane{LaneControl, LaneTrace, LaneAlert, LaneBulk} {
		wg.Add(1)
		go func(ln Lane) {
			defer wg.Done()
			next := uint64(0)
			errDone := errors.New("done")
			err := s.Receive(ln, func(f []byte) error {
				if got := binary.BigEndian.Uint64(f); got != next || len(f) != 8+int(next)*97 {
					t.Errorf("%v: frame %d (len %d), want %d", ln, got, len(f), next)
				}
				next++
				if next == n {
					return errDone
				}
				return nil
			})
			if !errors.Is(err, errDone) {
				t.Errorf("%v: receive ended: %v after %d frames", ln, err, next)
			}
		}(ln)
	}
	wg.Wait()
	if peer := s.Peer(); peer == nil || peer.Subject.CommonName != "client" {
		t.Errorf("server sees peer %v, want CN=client", peer)
	}
}

// With every lane backlogged, the writer serves trace first and gives bulk
// its floor.
func TestSchedulerPriorityAndFloor(t *testing.T) {
	l := &Link{opts: Options{}}
	l.opts.defaults()
	for i := 0; i < 20; i++ {
		l.queues[LaneBulk] = append(l.queues[LaneBulk], []byte{1})
		l.queues[LaneTrace] = append(l.queues[LaneTrace], []byte{1})
		l.queues[LaneAlert] = append(l.queues[LaneAlert], []byte{1})
	}
	var got []Lane
	for i := 0; i < 27; i++ {
		ln, ok := l.pick()
		if !ok {
			t.Fatal("nothing to pick")
		}
		got = append(got, ln)
		l.queues[ln] = l.queues[ln][1:]
	}
	// 8 trace, then one bulk (the floor), then the remaining 12 trace, then
	// alert, with bulk again after 8 more.
	want := []Lane{1, 1, 1, 1, 1, 1, 1, 1, 3, 1, 1, 1, 1, 1, 1, 1, 1, 3, 1, 1, 1, 1, 2, 2, 2, 2, 3}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("pick order = %v, want %v", got, want)
		}
	}
	l2 := &Link{opts: Options{NoPrio: true}}
	l2.opts.defaults()
	for _, ln := range []Lane{LaneBulk, LaneBulk, LaneTrace} {
		l2.queues[ln] = append(l2.queues[ln], []byte{1})
		l2.order = append(l2.order, ln)
	}
	if ln, _ := l2.pick(); ln != LaneBulk {
		t.Errorf("without priority the oldest frame goes first, got %v", ln)
	}
}

// A trace frame overtakes a backlog of bulk on a live link.
func TestTraceOvertakesBulk(t *testing.T) {
	c, s := pair(t, Options{}, Options{})
	ctx := context.Background()
	big := bytes.Repeat([]byte{7}, 1<<20)
	for i := 0; i < 6; i++ {
		if err := c.Send(ctx, LaneBulk, big); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.Send(ctx, LaneTrace, []byte("urgent")); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 16)
	go s.Receive(LaneBulk, func([]byte) error { order <- "bulk"; return nil })
	go s.Receive(LaneTrace, func(f []byte) error { order <- string(f); return nil })
	var seq []string
	for len(seq) < 7 {
		select {
		case x := <-order:
			seq = append(seq, x)
		case <-time.After(10 * time.Second):
			t.Fatalf("only %v arrived", seq)
		}
	}
	pos := -1
	for i, x := range seq {
		if x == "urgent" {
			pos = i
		}
	}
	if pos < 0 || pos > 1 {
		t.Errorf("trace frame arrived at position %d of %v; want it ahead of the bulk backlog", pos, seq)
	}
}

func TestOversizedFrameRefused(t *testing.T) {
	c, s := pair(t, Options{MaxFrame: 64 << 20}, Options{MaxFrame: 1 << 10})
	ctx := context.Background()
	if err := c.Send(ctx, LaneBulk, make([]byte, 4096)); err != nil {
		t.Fatal(err)
	}
	err := s.Receive(LaneBulk, func([]byte) error { return nil })
	if !errors.Is(err, ErrFrameTooLarge) {
		t.Fatalf("receive = %v, want ErrFrameTooLarge", err)
	}
	select {
	case <-c.Done():
	case <-time.After(5 * time.Second):
		t.Error("sender's link still up after the receiver refused an oversized frame")
	}
	if err := c.Send(ctx, LaneBulk, []byte("x")); !errors.Is(err, ErrClosed) {
		t.Errorf("send after close = %v, want ErrClosed", err)
	}
}

// A receiver that stops reading slows the sender: Send blocks once the lane
// queue and QUIC's windows are full, and resumes when reading resumes.
func TestBackpressure(t *testing.T) {
	c, s := pair(t, Options{Queue: 256 << 10}, Options{})
	frame := make([]byte, 32<<10)
	var sent int
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for sent < 10000 {
		if err := c.Send(ctx, LaneBulk, frame); err != nil {
			break
		}
		sent++
	}
	if sent == 10000 {
		t.Fatalf("sent %d frames (%d MiB) to a receiver that reads nothing", sent, sent*len(frame)>>20)
	}
	// Now read everything: the sender must be able to continue.
	var got int
	go s.Receive(LaneBulk, func([]byte) error { got++; return nil })
	ctx2, cancel2 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel2()
	for i := 0; i < 64; i++ {
		if err := c.Send(ctx2, LaneBulk, frame); err != nil {
			t.Fatalf("send after the receiver resumed: %v", err)
		}
	}
	if err := c.Flush(ctx2); err != nil {
		t.Fatal(err)
	}
	t.Logf("blocked after %d frames (%d KiB in flight)", sent, sent*len(frame)>>10)
}

func TestWrongALPNRefused(t *testing.T) {
	cliTLS, srvTLS := testTLS(t)
	ln, err := Listen("127.0.0.1:0", srvTLS, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	bad := cliTLS.Clone()
	bad.NextProtos = []string{"daemoneye/0"}
	_, err = dialRaw(ctx, ln.Addr(), bad)
	if err == nil {
		t.Fatal("a peer with another protocol version completed the handshake")
	}
}

// Peers from another CA or with a revoked certificate never get a link.
func TestHandshakeRefusals(t *testing.T) {
	ca := testCA(t)
	srv := nodeTLS(t, ca, pki.RoleProxy, "px", true, pki.RoleAgent)
	var logBuf syncBuffer
	srvLog := slog.New(slog.NewTextHandler(&logBuf, nil))
	ln, err := Listen("127.0.0.1:0", srv, Options{Log: srvLog})
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for i := 0; i < 10; i++ {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			l, err := ln.Accept(ctx)
			cancel()
			if err == nil {
				l.Close()
			}
		}
	}()

	other := testCA(t)
	revokedPEM, revokedKey, _ := ca.Issue(pki.RoleAgent, "revoked", pki.IssueOptions{})
	if err := ca.RevokeCert(revokedPEM, pki.ReasonKeyCompromise); err != nil {
		t.Fatal(err)
	}
	// The listener's verifier learns of the revocation the way a pushed CRL
	// arrives: a new Verifier state via SetCRL.
	srvV, _ := ca.Verifier()
	revokedCert, _ := pki.KeyPair(revokedPEM, revokedKey)
	ln2, err := Listen("127.0.0.1:0", srvV.TLSConfig(pki.NewCertHolder(mustPair(t, ca, pki.RoleProxy, "px2")), true, []string{ALPN}, pki.RoleAgent), Options{Log: srvLog})
	if err != nil {
		t.Fatal(err)
	}
	defer ln2.Close()
	cliV, _ := ca.Verifier()
	ca.Now = func() time.Time { return time.Now().Add(-48 * time.Hour) }
	expired := mustPair(t, ca, pki.RoleAgent, "old") // 24 h life, ended a day ago
	ca.Now = nil

	// The intruder trusts our CA (it stole ca.crt) so that the refusal is
	// the server's, not its own.
	otherV, _ := ca.Verifier()
	intruder := otherV.TLSConfig(pki.NewCertHolder(mustPair(t, other, pki.RoleAgent, "intruder")), false, []string{ALPN})
	cases := []struct {
		name string
		addr string
		tls  *tls.Config
		log  string
	}{
		{"another CA", ln.Addr(), intruder, "certificate from another CA"},
		{"wrong role", ln.Addr(), nodeTLS(t, ca, pki.RoleOperator, "alice", false), "operator/alice"},
		{"expired", ln.Addr(), cliV.TLSConfig(pki.NewCertHolder(expired), false, []string{ALPN}), "expired"},
		{"revoked", ln2.Addr(), cliV.TLSConfig(pki.NewCertHolder(revokedCert), false, []string{ALPN}), "revoked"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			l, err := Dial(ctx, c.addr, c.tls, Options{})
			if err == nil {
				// The client may finish its side before the server's
				// verdict arrives; the link must then die at once.
				select {
				case <-l.Done():
					err = l.Err()
				case <-time.After(3 * time.Second):
					t.Fatal("link with a refused peer stayed up")
				}
			}
			t.Logf("refused: %s", pki.Describe(err))
			deadline := time.Now().Add(3 * time.Second)
			for !strings.Contains(logBuf.String(), c.log) && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if !strings.Contains(logBuf.String(), c.log) {
				t.Errorf("server log lacks %q:\n%s", c.log, logBuf.String())
			}
		})
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func mustPair(t *testing.T, ca *pki.CA, role pki.Role, name string) *tls.Certificate {
	certPEM, keyPEM, err := ca.Issue(role, name, pki.IssueOptions{Loopback: true})
	if err != nil {
		t.Fatal(err)
	}
	c, err := pki.KeyPair(certPEM, keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return c
}
