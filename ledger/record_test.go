package ledger

import (
	"bytes"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
)

// The hand-written header encoder must be exactly the CBOR library's core
// deterministic encoding.
func TestHeaderEncodingMatchesCBOR(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	ints := []int64{0, 1, 23, 24, 255, 256, 65535, 65536, 1<<32 - 1, 1 << 32, math.MaxInt64, -1, -24, -25, -256, -257, -65537, math.MinInt64}
	for k := range 5000 {
		pick := func() int64 {
			if k%2 == 0 {
				return ints[r.IntN(len(ints))]
			}
			return r.Int64() >> r.IntN(63)
		}
		h := header{
			Index:       pick(),
			Time:        pick(),
			Kind:        strings.Repeat("k", r.IntN(MaxKind+1)),
			Actor:       strings.Repeat("é", r.IntN(MaxActor/2+1)),
			PayloadHash: bytes.Repeat([]byte{byte(k)}, r.IntN(40)),
			PayloadLen:  pick(),
		}
		want, err := encMode.Marshal(h)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendHeader(nil, h); !bytes.Equal(got, want) {
			t.Fatalf("header %+v:\n got %x\nwant %x", h, got, want)
		}
	}
}
