package transport

import (
	"context"
	"log/slog"
	"time"

	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// SendEvery sends the frame next builds up the control lane first after
// start, then every interval, until ctx ends: how agents and proxies report
// their health for the fleet registry. A send that fails is logged; the
// next one is tried on time.
func (u *Uplink) SendEvery(ctx context.Context, first, every time.Duration, next func() wire.Frame, log *slog.Logger) error {
	t := time.NewTimer(first)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		if err := u.SendControl(next()); err != nil {
			log.Warn("send control frame", "err", err)
		}
		t.Reset(every)
	}
}
