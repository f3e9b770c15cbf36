//go:build !linux || !amd64

package capture

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
)

// EBPFSource is the eBPF sensor. Its objects are built for linux/amd64 only
// (bpf/generate.sh); elsewhere NewEBPF reports ErrUnsupported so the agent
// falls back to the /proc source.
type EBPFSource struct{}

// NewEBPF reports ErrUnsupported on this platform.
func NewEBPF(opts Options, log *slog.Logger) (*EBPFSource, error) {
	return nil, fmt.Errorf("ebpf sensor is built for linux/amd64, not %s/%s: %w", runtime.GOOS, runtime.GOARCH, ErrUnsupported)
}

func (s *EBPFSource) Name() string                                    { return "ebpf" }
func (s *EBPFSource) Run(ctx context.Context, out chan<- Event) error { return ErrUnsupported }
func (s *EBPFSource) Lost() map[string]uint64                         { return nil }
func (s *EBPFSource) Blind() []string                                 { return nil }
func (s *EBPFSource) Close() error                                    { return nil }
