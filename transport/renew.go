package transport

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/evilbitlabs/daemoneye/internal/atomicfile"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Renewer keeps a node's short-lived certificate fresh through the tree:
// when less than a third of its life is left it sends a RenewRequest (a CSR
// for a new key, proven by the current key) up the control lane; the center
// signs it and the answer is routed back down. The new certificate and key
// are written over the node's files and take effect at the next handshake
// (links that are up keep going) and for the next batch signed.
type Renewer struct {
	id       *Identity
	certFile string
	keyFile  string
	send     func(wire.Frame) error
	log      *slog.Logger
	every    time.Duration
	now      func() time.Time

	mu       sync.Mutex
	pending  ed25519.PrivateKey
	sentAt   time.Time
	renewals atomic.Uint64
}

// NewRenewer renews id's certificate; send puts a frame on the uplink.
func NewRenewer(id *Identity, certFile, keyFile string, every time.Duration, send func(wire.Frame) error, log *slog.Logger) *Renewer {
	if every <= 0 {
		every = time.Minute
	}
	return &Renewer{id: id, certFile: certFile, keyFile: keyFile, send: send, every: every, now: time.Now,
		log: log.With("component", "renew")}
}

// Renewals counts certificates renewed since start.
func (r *Renewer) Renewals() uint64 { return r.renewals.Load() }

// Run checks the certificate every interval until ctx ends.
func (r *Renewer) Run(ctx context.Context) error {
	t := time.NewTicker(r.every)
	defer t.Stop()
	for {
		if err := r.check(); err != nil {
			r.log.Warn("renewal", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}

func (r *Renewer) check() error {
	cur := r.id.Holder.Load()
	leaf, err := x509.ParseCertificate(cur.Certificate[0])
	if err != nil {
		return err
	}
	now := r.now()
	if !pki.NeedsRenewal(leaf, now) {
		return nil
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending != nil && now.Sub(r.sentAt) < 4*r.every {
		return nil // asked already; wait for the answer
	}
	_, newKey, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	req, err := pki.NewRenewalRequest(leaf, cur.PrivateKey.(ed25519.PrivateKey), newKey)
	if err != nil {
		return err
	}
	if err := r.send(wire.RenewRequest{NodeID: r.id.Name, CSR: req.CSR, Cert: req.Cert, Proof: req.Proof}); err != nil {
		return err
	}
	r.pending, r.sentAt = newKey, now
	r.log.Info("certificate renewal requested", "expires", leaf.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// Handle installs the certificate from a RenewResponse for this node.
func (r *Renewer) Handle(resp wire.RenewResponse) error {
	if resp.Error != "" {
		return fmt.Errorf("renewal refused by the center: %s", resp.Error)
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.pending == nil {
		return errors.New("renewal answer without a pending request")
	}
	cert, err := x509.ParseCertificate(resp.Cert)
	if err != nil {
		return fmt.Errorf("renewal answer: %w", err)
	}
	if pub, ok := cert.PublicKey.(ed25519.PublicKey); !ok || !bytes.Equal(pub, r.pending.Public().(ed25519.PublicKey)) {
		return errors.New("renewal answer is for another key")
	}
	if err := r.id.Verifier.VerifyCertificate(cert, r.id.Role); err != nil {
		return fmt.Errorf("renewal answer: %w", err)
	}
	if _, name, err := pki.Identity(cert); err != nil || name != r.id.Name {
		return fmt.Errorf("renewal answer names %q, we are %q", name, r.id.Name)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: resp.Cert})
	keyPEM, err := pki.EncodeKey(r.pending)
	if err != nil {
		return err
	}
	pair, err := pki.KeyPair(certPEM, keyPEM)
	if err != nil {
		return err
	}
	// Key first: a crash between the two leaves the old certificate with a
	// new key, which LoadKeyPair refuses loudly, rather than a silent mix.
	if err := atomicfile.Write(r.keyFile, keyPEM, 0o600); err != nil {
		return err
	}
	if err := atomicfile.Write(r.certFile, certPEM, 0o644); err != nil {
		return err
	}
	r.id.Holder.Store(pair)
	r.pending = nil
	r.renewals.Add(1)
	r.log.Info("certificate renewed", "serial", pki.FormatSerial(cert.SerialNumber), "expires", cert.NotAfter.UTC().Format(time.RFC3339))
	return nil
}

// RouteNode returns the child through which a node (agent or proxy) is
// reached: renewal answers go to proxies too, which the agent table lacks.
func (s *Server) RouteNode(id string) (*Child, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.children {
		if c.ID == id {
			return c, true
		}
	}
	for _, c := range s.children {
		c.mu.Lock()
		found := c.agents[id]
		for _, b := range c.below {
			found = found || b == id
		}
		c.mu.Unlock()
		if found {
			return c, true
		}
	}
	return nil, false
}
