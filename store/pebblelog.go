package store

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/cockroachdb/pebble/v2"
)

// pebbleLogger sends Pebble's own messages to slog instead of the standard
// library logger (which would print to stderr).
type pebbleLogger struct{ log *slog.Logger }

// Infof is Pebble's routine chatter (WALs found and replayed at open, ...):
// debug level, so that the agent stays quiet in its operators' logs.
func (p pebbleLogger) Infof(format string, args ...any) {
	p.log.LogAttrs(context.Background(), slog.LevelDebug, "pebble", slog.String("detail", fmt.Sprintf(format, args...)))
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.log.LogAttrs(context.Background(), slog.LevelError, "pebble", slog.String("detail", fmt.Sprintf(format, args...)))
}

// Fatalf must not return: Pebble calls it on broken invariants and carries
// on as if the process had stopped. A panic (after the log line) unwinds to
// whatever the caller runs at the top instead of exiting under it.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	p.log.LogAttrs(context.Background(), slog.LevelError, "pebble fatal", slog.String("detail", msg))
	panic("pebble: " + msg)
}

// eventListener logs the Pebble events an operator should see. Data
// corruption is logged rather than fatal (Pebble's default): reads of the
// damaged files then fail with errors that the store returns.
func eventListener(log *slog.Logger) *pebble.EventListener {
	return &pebble.EventListener{
		BackgroundError: func(err error) {
			log.Error("pebble background error", "err", err)
		},
		DataCorruption: func(info pebble.DataCorruptionInfo) {
			log.Error("pebble data corruption", "detail", info.String())
		},
		DiskSlow: func(info pebble.DiskSlowInfo) {
			log.Warn("disk slow", "detail", info.String())
		},
		WriteStallBegin: func(info pebble.WriteStallBeginInfo) {
			log.Warn("write stall", "reason", info.Reason)
		},
		WriteStallEnd: func() {
			log.Info("write stall ended")
		},
	}
}

// PebbleLogger is the slog adapter for Pebble that every database of ours
// uses (local store, WALs, the center's batch store).
func PebbleLogger(log *slog.Logger) pebble.Logger {
	return pebbleLogger{log: log.With("engine", "pebble")}
}

// PebbleEvents is the event listener every database of ours uses.
func PebbleEvents(log *slog.Logger) *pebble.EventListener { return eventListener(log) }
