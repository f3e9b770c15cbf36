package loadgen

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"runtime/pprof"
	"sort"
	"time"
)

// Every role runs under a pprof label (role=center|proxy|agent|loadgen);
// goroutines inherit the label of the goroutine that starts them, so a CPU
// profile of the run splits the process's CPU by role. What no role
// started (the garbage collector's workers, the runtime) has no label and
// is reported as "runtime".

func roleCtx(ctx context.Context, role string) context.Context {
	return pprof.WithLabels(ctx, pprof.Labels("role", role))
}

// asRole runs f with the goroutine labelled as role.
func asRole(role string, f func()) {
	pprof.Do(context.Background(), pprof.Labels("role", role), func(context.Context) { f() })
}

// startAs is start with the goroutine labelled as role.
func startAs(role string, run func(context.Context) error) *runner {
	ctx, cancel := context.WithCancel(context.Background())
	r := &runner{cancel: cancel, done: make(chan error, 1)}
	go func() {
		pprof.SetGoroutineLabels(roleCtx(ctx, role))
		r.done <- run(ctx)
	}()
	return r
}

// RoleCPU is the CPU time a profile attributes to each role.
type RoleCPU map[string]time.Duration

func (r RoleCPU) String() string {
	var total time.Duration
	keys := make([]string, 0, len(r))
	for k, v := range r {
		keys = append(keys, k)
		total += v
	}
	sort.Slice(keys, func(i, j int) bool { return r[keys[i]] > r[keys[j]] })
	var b bytes.Buffer
	for i, k := range keys {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "%s %.1f s (%.0f %%)", k, r[k].Seconds(), 100*float64(r[k])/float64(max(total, 1)))
	}
	return b.String()
}

// profileByRole sums a CPU profile's samples (pprof's gzipped protobuf)
// by their role label. It reads only what it needs of the format:
// Profile.sample (2), Profile.string_table (6), Sample.value (2),
// Sample.label (3), Label.key (1) and Label.str (2); the CPU profile's
// second value is nanoseconds.
func profileByRole(prof []byte) (RoleCPU, error) {
	zr, err := gzip.NewReader(bytes.NewReader(prof))
	if err != nil {
		return nil, err
	}
	raw, err := io.ReadAll(zr)
	if err != nil {
		return nil, err
	}
	type sample struct {
		ns       int64
		roleStrs []int64 // string indexes of role label values
	}
	var samples []sample
	var strs []string
	roleKey := int64(-1)
	var labels [][2]int64 // (key, str) per label, per sample
	err = fields(raw, func(num int, v uint64, b []byte) error {
		switch num {
		case 2:
			var s sample
			var vals []int64
			labels = labels[:0]
			if err := fields(b, func(num int, v uint64, b []byte) error {
				switch num {
				case 2:
					if b != nil { // packed
						for len(b) > 0 {
							x, n := uvarint(b)
							if n <= 0 {
								return errors.New("bad packed value")
							}
							vals = append(vals, int64(x))
							b = b[n:]
						}
					} else {
						vals = append(vals, int64(v))
					}
				case 3:
					var kv [2]int64
					if err := fields(b, func(num int, v uint64, _ []byte) error {
						if num == 1 || num == 2 {
							kv[num-1] = int64(v)
						}
						return nil
					}); err != nil {
						return err
					}
					labels = append(labels, kv)
				}
				return nil
			}); err != nil {
				return err
			}
			if len(vals) >= 2 {
				s.ns = vals[1]
			}
			for _, kv := range labels {
				s.roleStrs = append(s.roleStrs, kv[0], kv[1])
			}
			samples = append(samples, s)
		case 6:
			strs = append(strs, string(b))
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	for i, s := range strs {
		if s == "role" {
			roleKey = int64(i)
		}
	}
	out := RoleCPU{}
	for _, s := range samples {
		role := "runtime"
		for i := 0; i+1 < len(s.roleStrs); i += 2 {
			if s.roleStrs[i] == roleKey && int(s.roleStrs[i+1]) < len(strs) {
				role = strs[s.roleStrs[i+1]]
			}
		}
		out[role] += time.Duration(s.ns)
	}
	return out, nil
}

func uvarint(b []byte) (uint64, int) {
	var x uint64
	for i, c := range b {
		if i == 10 {
			return 0, -1
		}
		x |= uint64(c&0x7f) << (7 * i)
		if c < 0x80 {
			return x, i + 1
		}
	}
	return 0, 0
}

// fields walks a protobuf message: f gets each field's number and either
// its varint value or its bytes (length-delimited); fixed-width fields are
// skipped.
func fields(b []byte, f func(num int, v uint64, b []byte) error) error {
	for len(b) > 0 {
		tag, n := uvarint(b)
		if n <= 0 {
			return errors.New("profile: bad tag")
		}
		b = b[n:]
		num, typ := int(tag>>3), tag&7
		switch typ {
		case 0:
			v, n := uvarint(b)
			if n <= 0 {
				return errors.New("profile: bad varint")
			}
			b = b[n:]
			if err := f(num, v, nil); err != nil {
				return err
			}
		case 2:
			l, n := uvarint(b)
			if n <= 0 || uint64(len(b)-n) < l {
				return errors.New("profile: bad length")
			}
			if err := f(num, 0, b[n:n+int(l)]); err != nil {
				return err
			}
			b = b[n+int(l):]
		case 1:
			if len(b) < 8 {
				return errors.New("profile: short fixed64")
			}
			b = b[8:]
		case 5:
			if len(b) < 4 {
				return errors.New("profile: short fixed32")
			}
			b = b[4:]
		default:
			return fmt.Errorf("profile: wire type %d", typ)
		}
	}
	return nil
}
