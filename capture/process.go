package capture

// Process is one entry of the process table: what is known about a process
// from its last exec (or from /proc when it was seeded at start).
type Process struct {
	Key    ProcKey `cbor:"1,keyasint"`
	Parent ProcKey `cbor:"2,keyasint"`
	Comm   string  `cbor:"3,keyasint,omitempty"`
	Exec   Exec    `cbor:"4,keyasint"`

	StartTime int64 `cbor:"5,keyasint"`           // wall clock, Unix nanoseconds
	ExitTime  int64 `cbor:"6,keyasint,omitempty"` // 0 while alive
	Exit      *Exit `cbor:"7,keyasint,omitempty"`

	// Seeded is true when the entry was read from /proc at agent start
	// rather than observed being created.
	Seeded bool `cbor:"8,keyasint,omitempty"`
	// Execed is true once an exec was observed (or the seed had a cmdline);
	// a fork without exec keeps the parent's image.
	Execed bool `cbor:"9,keyasint,omitempty"`
}

// Alive reports whether the process has not been seen to exit.
func (p *Process) Alive() bool { return p.ExitTime == 0 }
