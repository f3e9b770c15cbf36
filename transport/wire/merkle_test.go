package wire

import (
	"crypto/sha256"
	"errors"
	"testing"
)

// rfc6962 is an independent, recursive RFC 6962 Merkle Tree Hash, to check
// that we drive tlog the way the RFC says.
func rfc6962(leaves [][]byte) [32]byte {
	if len(leaves) == 1 {
		return sha256.Sum256(append([]byte{0}, leaves[0]...))
	}
	k := 1
	for k*2 < len(leaves) {
		k *= 2
	}
	l, r := rfc6962(leaves[:k]), rfc6962(leaves[k:])
	return sha256.Sum256(append(append([]byte{1}, l[:]...), r[:]...))
}

func TestEventProofs(t *testing.T) {
	for n := 1; n <= 17; n++ {
		evs := execEvents(n)
		b, err := OpenBatch(mustSeal(t, "ag-merkle", uint64(n), evs, n%2 == 0), testPub(), Limits{})
		if err != nil {
			t.Fatalf("n=%d: %v", n, err)
		}
		leaves := make([][]byte, n)
		for i := range leaves {
			leaves[i] = b.EventCBOR(i)
		}
		if got := rfc6962(leaves); got != b.Root {
			t.Fatalf("n=%d: root %x, RFC 6962 says %x", n, b.Root, got)
		}
		for i := range n {
			proof, err := b.EventProof(i)
			if err != nil {
				t.Fatalf("n=%d i=%d: EventProof: %v", n, i, err)
			}
			if err := VerifyEventProof(b.Root, b.EventCBOR(i), i, n, proof); err != nil {
				t.Fatalf("n=%d i=%d: valid proof refused: %v", n, i, err)
			}
			// Anyone holding just the decoded event can rebuild the leaf.
			leaf, _ := EncodeEvent(b.Events[i])
			if err := VerifyEventProof(b.Root, leaf, i, n, proof); err != nil {
				t.Fatalf("n=%d i=%d: re-encoded event refused: %v", n, i, err)
			}

			changed := b.Events[i]
			changed.Time++
			bad, _ := EncodeEvent(changed)
			mustFail := func(what string, root [32]byte, data []byte, i, n int, p [][32]byte) {
				t.Helper()
				if err := VerifyEventProof(root, data, i, n, p); !errors.Is(err, ErrBadProof) {
					t.Errorf("n=%d i=%d %s: got %v, want ErrBadProof", n, i, what, err)
				}
			}
			mustFail("changed event", b.Root, bad, i, n, proof)
			mustFail("wrong index", b.Root, leaf, (i+1)%(n+1), n, proof)
			// No "wrong n" case: RFC 6962 proofs for a leaf can coincide
			// for trees of size n and n+1. n is authenticated with the root
			// (the signed batch has exactly n events), as a tlog checkpoint
			// signs its size with its hash.
			mustFail("index out of range", b.Root, leaf, n, n, proof)
			mustFail("negative index", b.Root, leaf, -1, n, proof)
			root := b.Root
			root[0] ^= 1
			mustFail("other root", root, leaf, i, n, proof)
			if len(proof) > 0 {
				p := append([][32]byte(nil), proof...)
				p[len(p)-1][31] ^= 1
				mustFail("tampered proof", b.Root, leaf, i, n, p)
				mustFail("short proof", b.Root, leaf, i, n, proof[:len(proof)-1])
			}
			mustFail("long proof", b.Root, leaf, i, n, append(append([][32]byte(nil), proof...), [32]byte{}))
		}
		if _, err := b.EventProof(n); err == nil {
			t.Errorf("n=%d: EventProof(n) succeeded", n)
		}
	}
}
