// Package dsse is the Dead Simple Signing Envelope (DSSE v1,
// github.com/secure-systems-lab/dsse) in its standard JSON form, signed
// with Ed25519: the envelope of forensic packages (ledger) and of update
// bundle manifests (bundle). Any DSSE tool given the public key can check
// what these sign.
package dsse

import (
	"bytes"
	"crypto/ed25519"
	"encoding/json"
	"errors"
	"fmt"
	"io"
)

// Envelope is a DSSE envelope; encoding/json writes []byte as standard
// base64, as DSSE specifies.
type Envelope struct {
	PayloadType string      `json:"payloadType"`
	Payload     []byte      `json:"payload"`
	Signatures  []Signature `json:"signatures"`
}

// Signature is one signature of an envelope.
type Signature struct {
	KeyID string `json:"keyid"`
	Sig   []byte `json:"sig"`
}

// PAE is DSSE's pre-authentication encoding: what is signed.
func PAE(payloadType string, payload []byte) []byte {
	b := fmt.Appendf(nil, "DSSEv1 %d %s %d ", len(payloadType), payloadType, len(payload))
	return append(b, payload...)
}

// Sign makes a one-signature envelope over payload.
func Sign(payloadType string, payload []byte, keyID string, key ed25519.PrivateKey) Envelope {
	return Envelope{PayloadType: payloadType, Payload: payload, Signatures: []Signature{{
		KeyID: keyID, Sig: ed25519.Sign(key, PAE(payloadType, payload))}}}
}

// Verifies reports whether sig is a signature of the envelope's payload by key.
func (e *Envelope) Verifies(sig Signature, key ed25519.PublicKey) bool {
	return len(key) == ed25519.PublicKeySize && ed25519.Verify(key, PAE(e.PayloadType, e.Payload), sig.Sig)
}

// UnmarshalStrict decodes one JSON value into v, refusing unknown fields and
// anything after the value: a signed document has one reading.
func UnmarshalStrict(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return errors.New("data after the JSON value")
	}
	return nil
}
