//go:build !linux || !amd64

package capture

// Without the eBPF sensor there are no focused traces.

func (s *EBPFSource) SetTracePolicy(p TracePolicy) {}

func (s *EBPFSource) StartTrace(spec TraceSpec) error { return ErrTraceUnsupported }

func (s *EBPFSource) StopTrace(traceID, reason string) error { return ErrTraceUnsupported }

func (s *EBPFSource) Traces() []TraceStatus { return nil }
