package capture

// The /proc fallback sees processes only after the fact, through the proc
// connector and /proc reads: it has no hook on file or socket syscalls and
// no way to follow a lineage in the kernel. It satisfies Tracer only to say
// so, with ErrTraceUnsupported, so that the agent can hand any Source a
// trace command and report a clear refusal.

import "fmt"

var _ Tracer = (*ProcSource)(nil)

// StartTrace refuses: focused traces need the eBPF sensor.
func (s *ProcSource) StartTrace(spec TraceSpec) error {
	return fmt.Errorf("trace %s on the proc source: %w", spec.TraceID, ErrTraceUnsupported)
}

// StopTrace refuses like StartTrace: no trace can be running here.
func (s *ProcSource) StopTrace(traceID, reason string) error {
	return fmt.Errorf("stop trace %s on the proc source: %w", traceID, ErrTraceUnsupported)
}

// Traces reports none.
func (s *ProcSource) Traces() []TraceStatus { return nil }
