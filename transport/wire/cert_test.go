package wire

import (
	"bytes"
	"crypto/ed25519"
	"errors"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
)

// A batch sealed with its certificate carries it, signed, and still opens.
func TestSealBatchCert(t *testing.T) {
	pub, key, _ := ed25519.GenerateKey(nil)
	cert := []byte("not really DER, but bytes the signature covers")
	evs := []capture.Event{{Time: 1, Kind: capture.KindExec, Proc: capture.ProcKey{PID: 7, Start: 9}, Exec: &capture.Exec{Exe: "/bin/x", Argv: []string{"x", "\xff"}}}}
	sealed, err := SealBatchCert("web-1", 3, evs, key, cert, true)
	if err != nil {
		t.Fatal(err)
	}
	got, err := PeekCert(sealed)
	if err != nil || string(got) != string(cert) {
		t.Fatalf("PeekCert = %q, %v", got, err)
	}
	b, err := OpenBatch(sealed, pub, DefaultLimits())
	if err != nil || b.AgentID != "web-1" || b.Seq != 3 || b.Events[0].Exec.Argv[1] != "\xff" {
		t.Fatalf("OpenBatch = %+v, %v", b, err)
	}
	plain, _ := SealBatch("web-1", 4, evs, key, true)
	if _, err := PeekCert(plain); !errors.Is(err, ErrMalformed) {
		t.Errorf("PeekCert of a batch without certificate = %v, want ErrMalformed", err)
	}
	// The certificate is under the signature: swapping it breaks the batch.
	i := bytes.Index(sealed, cert)
	sealed[i] ^= 1
	if _, err := OpenBatch(sealed, pub, DefaultLimits()); !errors.Is(err, ErrBadSignature) {
		t.Errorf("OpenBatch with a changed certificate = %v, want ErrBadSignature", err)
	}
}
