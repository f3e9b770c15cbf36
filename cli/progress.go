package cli

import (
	"fmt"
	"io"
	"time"
)

// progress reports a long operation on stderr, at most once a second and
// only once it has taken a second, so quick runs stay quiet: "WHAT: done
// of total (pct), elapsed". Bytes are shown in MiB.
type progress struct {
	w           io.Writer
	what        string
	bytes       bool
	total, done int64
	start, last time.Time
	now         func() time.Time
}

func newProgress(w io.Writer, what string, total int64, bytes bool) *progress {
	t := time.Now()
	return &progress{w: w, what: what, bytes: bytes, total: total, start: t, last: t, now: time.Now}
}

// set records done and reports when a second has passed since the last
// report.
func (p *progress) set(done, total int64) {
	p.done, p.total = done, total
	if now := p.now(); now.Sub(p.last) >= time.Second {
		p.last = now
		fmt.Fprintf(p.w, "%s: %s, %s\n", p.what, p.figures(), now.Sub(p.start).Round(time.Second))
	}
}

func (p *progress) add(n int64) { p.set(p.done+n, p.total) }

func (p *progress) figures() string {
	f := func(n int64) string {
		if p.bytes {
			return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
		}
		return fmt.Sprint(n)
	}
	if p.total <= 0 {
		return f(p.done)
	}
	return fmt.Sprintf("%s of %s (%d%%)", f(p.done), f(p.total), p.done*100/p.total)
}

// reader counts what is read through it.
func (p *progress) reader(r io.Reader) io.Reader { return progressReader{r, p} }

type progressReader struct {
	r io.Reader
	p *progress
}

func (r progressReader) Read(b []byte) (int, error) {
	n, err := r.r.Read(b)
	r.p.add(int64(n))
	return n, err
}
