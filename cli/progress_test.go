package cli

import (
	"bytes"
	"io"
	"strings"
	"testing"
	"time"
)

func TestProgress(t *testing.T) {
	var out bytes.Buffer
	p := newProgress(&out, "download", 4<<20, true)
	clock := p.start
	p.now = func() time.Time { return clock }
	r := p.reader(io.LimitReader(zeros{}, 4<<20))
	buf := make([]byte, 1<<20)
	for i := range 4 {
		clock = clock.Add(600 * time.Millisecond)
		if _, err := io.ReadFull(r, buf); err != nil {
			t.Fatalf("read %d: %v", i, err)
		}
	}
	// Reports at 1.2 s (2 MiB) and 2.4 s (4 MiB): once a second at most.
	want := "download: 2.0 MiB of 4.0 MiB (50%), 1s\ndownload: 4.0 MiB of 4.0 MiB (100%), 2s\n"
	if out.String() != want {
		t.Errorf("progress lines:\n%s\nwant:\n%s", out.String(), want)
	}
	q := newProgress(&out, "entries", 0, false)
	q.now = func() time.Time { return q.start.Add(time.Minute) }
	out.Reset()
	q.set(7, 0)
	if !strings.HasPrefix(out.String(), "entries: 7, 1m0s") {
		t.Errorf("unknown total: %q", out.String())
	}
}

type zeros struct{}

func (zeros) Read(b []byte) (int, error) { clear(b); return len(b), nil }
