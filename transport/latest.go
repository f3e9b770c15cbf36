package transport

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// latestSendTimeout bounds one send of the kept frame to one child.
const latestSendTimeout = 30 * time.Second

// Latest keeps the newest frame of one kind that every child must hold (the
// rule pack set) and sees that each connected child gets it once: Set sends
// it to every child, CatchUp (from the server's OnChange) to children that
// connected since. Sends run off the caller's goroutine.
type Latest struct {
	srv *Server
	log *slog.Logger

	mu   sync.Mutex
	f    wire.Frame
	gen  uint64
	sent map[*Child]uint64 // generation each child was sent (or is being sent)
}

// NewLatest keeps frames for the children of srv.
func NewLatest(srv *Server, log *slog.Logger) *Latest {
	return &Latest{srv: srv, log: log, sent: map[*Child]uint64{}}
}

// Get returns the frame kept (nil before the first Set).
func (l *Latest) Get() wire.Frame {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f
}

// Set keeps f and sends it to every connected child.
func (l *Latest) Set(f wire.Frame) {
	l.mu.Lock()
	l.f = f
	l.gen++
	l.mu.Unlock()
	l.CatchUp()
}

// CatchUp sends the kept frame to every connected child that has not had
// it, and forgets children that left.
func (l *Latest) CatchUp() {
	children := l.srv.Children()
	l.mu.Lock()
	defer l.mu.Unlock()
	live := make(map[*Child]bool, len(children))
	for _, c := range children {
		live[c] = true
	}
	for c := range l.sent {
		if !live[c] {
			delete(l.sent, c)
		}
	}
	if l.f == nil {
		return
	}
	for _, c := range children {
		if l.sent[c] == l.gen {
			continue
		}
		l.sent[c] = l.gen
		go l.send(c, l.f, l.gen)
	}
}

func (l *Latest) send(c *Child, f wire.Frame, gen uint64) {
	ctx, cancel := context.WithTimeout(context.Background(), latestSendTimeout)
	defer cancel()
	if err := c.Send(ctx, f); err != nil {
		l.log.Warn("send to child", "child", c.ID, "frame", f.Type(), "err", err)
		l.mu.Lock()
		if l.sent[c] == gen {
			delete(l.sent, c) // the next CatchUp tries again
		}
		l.mu.Unlock()
	}
}
