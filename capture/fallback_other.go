//go:build !linux

package capture

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime"
	"time"
)

// DefaultPollInterval is how often the fallback lists TCP sockets.
const DefaultPollInterval = 250 * time.Millisecond

// ErrProcessGone is returned when a process exited before /proc was read.
var ErrProcessGone = errors.New("process gone")

// ProcSource is the /proc fallback; it exists only on Linux.
type ProcSource struct {
	PollInterval time.Duration
}

// NewProc reports ErrUnsupported: /proc and the proc connector are Linux's.
func NewProc(opts Options, log *slog.Logger) (*ProcSource, error) {
	return nil, fmt.Errorf("proc source on %s: %w", runtime.GOOS, ErrUnsupported)
}

func (s *ProcSource) Name() string                                    { return "proc" }
func (s *ProcSource) Run(ctx context.Context, out chan<- Event) error { return ErrUnsupported }
func (s *ProcSource) Lost() map[string]uint64                         { return nil }
func (s *ProcSource) Blind() []string                                 { return nil }
func (s *ProcSource) Close() error                                    { return nil }

// ReadProcess needs Linux's /proc.
func ReadProcess(procRoot string, pid int) (Process, error) {
	return Process{}, fmt.Errorf("read process on %s: %w", runtime.GOOS, ErrUnsupported)
}

// ScanProcesses needs Linux's /proc.
func ScanProcesses(procRoot string) ([]Process, error) { return scanProcesses(procRoot, 0) }

func scanProcesses(procRoot string, argvMax int) ([]Process, error) {
	return nil, fmt.Errorf("scan processes on %s: %w", runtime.GOOS, ErrUnsupported)
}
