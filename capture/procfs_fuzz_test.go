//go:build linux

package capture

import (
	"bytes"
	"slices"
	"strings"
	"testing"
)

// Fuzz targets for the /proc parsers: no input may panic them, and what
// they accept must be consistent with the input. Seeds live in
// testdata/fuzz/FuzzXxx; run one with
//
//	go test ./capture -run '^$' -fuzz '^FuzzParseStat$' -fuzztime 30s

func FuzzParseStat(f *testing.F) {
	f.Add([]byte(statLine(1, "init", 0, 0, 1)))
	f.Add([]byte(statLine(7, "a) (b", 3, 0x8803, 99)))
	f.Fuzz(func(t *testing.T, b []byte) {
		s, err := parseStat(b)
		if err != nil {
			return
		}
		// comm lies between the first '(' and the last ')'.
		if !bytes.Contains(b, s.Comm) || s.PID < 0 || s.PPID < 0 {
			t.Fatalf("parseStat(%q) = %+v", b, s)
		}
	})
}

// FuzzStatRoundTrip checks that any comm the kernel could print survives.
func FuzzStatRoundTrip(f *testing.F) {
	f.Add("bash", uint32(1), uint64(12345))
	f.Add("a) (b", uint32(0), uint64(0))
	f.Add("x\ny) 9 (", uint32(1<<31), uint64(1<<63))
	f.Add("\xff\xfe)", uint32(2), uint64(7))
	f.Fuzz(func(t *testing.T, comm string, ppid uint32, start uint64) {
		ppid &= 1<<31 - 1
		line := statLine(42, comm, int(ppid), 0, start)
		s, err := parseStat([]byte(line))
		if err != nil {
			t.Fatalf("parseStat(%q): %v", line, err)
		}
		if string(s.Comm) != comm || s.PPID != int(ppid) || s.Start != start || s.PID != 42 {
			t.Fatalf("parseStat(%q) = %+v, want comm %q ppid %d start %d", line, s, comm, ppid, start)
		}
	})
}

func FuzzParseStatus(f *testing.F) {
	f.Add([]byte("Name:\tsh\nUid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseStatus(b)
	})
}

func FuzzParseCmdline(f *testing.F) {
	f.Add([]byte("/bin/sh\x00-c\x00exit 7\x00"), 4096)
	f.Add([]byte("nginx: worker"), 4)
	f.Add([]byte("\xff\xfe\x00\x00x"), 2)
	f.Fuzz(func(t *testing.T, b []byte, max int) {
		argv, trunc := parseCmdline(b, max)
		if len(b) == 0 {
			if argv != nil {
				t.Fatalf("parseCmdline(empty) = %q", argv)
			}
			return
		}
		if trunc != (max > 0 && len(b) > max) {
			t.Fatalf("parseCmdline(%q, %d) truncated = %v", b, max, trunc)
		}
		want := b
		if trunc {
			want = want[:max]
		}
		want = bytes.TrimSuffix(want, []byte{0})
		if got := strings.Join(argv, "\x00"); got != string(want) {
			t.Fatalf("parseCmdline(%q, %d) = %q, which does not join back to %q", b, max, argv, want)
		}
		if len(want) > 0 && slices.Equal(argv, nil) {
			t.Fatalf("parseCmdline(%q) lost the argv", b)
		}
	})
}

func FuzzParseNSLink(f *testing.F) {
	f.Add([]byte("pid:[4026531836]"))
	f.Add([]byte("socket:[1]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, ino, ok := parseNSLink(b)
		if !ok {
			return
		}
		if !bytes.HasPrefix(b, kind) || !bytes.HasSuffix(b, []byte("]")) {
			t.Fatalf("parseNSLink(%q) = %q %d", b, kind, ino)
		}
		_, _ = parseSocketLink(b)
	})
}

func FuzzParseCgroupV2(f *testing.F) {
	f.Add([]byte("0::/user.slice/a:b.scope\n"))
	f.Add([]byte("1:name=systemd:/\n0::/\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, ok := parseCgroupV2(b)
		if ok && (len(p) == 0 || p[0] != '/' || !bytes.Contains(b, p) || bytes.IndexByte(p, '\n') >= 0) {
			t.Fatalf("parseCgroupV2(%q) = %q", b, p)
		}
	})
}

func FuzzTTYName(f *testing.F) {
	f.Add(uint32(0x8803))
	f.Fuzz(func(t *testing.T, nr uint32) {
		if s := ttyName(nr); (s == "") != (nr == 0) {
			t.Fatalf("ttyName(%#x) = %q", nr, s)
		}
	})
}
