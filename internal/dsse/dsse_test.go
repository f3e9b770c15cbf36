package dsse

import (
	"crypto/ed25519"
	"encoding/json"
	"testing"
)

// The DSSE specification's PAE example.
func TestPAE(t *testing.T) {
	got := string(PAE("http://example.com/HelloWorld", []byte("hello world")))
	want := "DSSEv1 29 http://example.com/HelloWorld 11 hello world"
	if got != want {
		t.Fatalf("PAE = %q, want %q", got, want)
	}
}

func TestSignVerifyStrict(t *testing.T) {
	pub, priv, _ := ed25519.GenerateKey(nil)
	otherPub, _, _ := ed25519.GenerateKey(nil)
	env := Sign("application/x-test", []byte(`{"a":1}`), "k1", priv)
	if !env.Verifies(env.Signatures[0], pub) {
		t.Fatal("signature does not verify with its key")
	}
	if env.Verifies(env.Signatures[0], otherPub) {
		t.Fatal("signature verifies with another key")
	}
	env.Payload = []byte(`{"a":2}`)
	if env.Verifies(env.Signatures[0], pub) {
		t.Fatal("signature verifies over a changed payload")
	}
	b, _ := json.Marshal(Sign("t", []byte("p"), "k", priv))
	var back Envelope
	if err := UnmarshalStrict(b, &back); err != nil || back.PayloadType != "t" || string(back.Payload) != "p" {
		t.Fatalf("round trip: %+v %v", back, err)
	}
	for _, bad := range []string{`{"payloadType":"t","extra":1}`, `{"payloadType":"t"} {}`, `{`} {
		if err := UnmarshalStrict([]byte(bad), &back); err == nil {
			t.Errorf("UnmarshalStrict(%s) accepted", bad)
		}
	}
}
