package ledger

import (
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// FuzzPackage feeds the package decoder and verifier a file and a CA
// certificate (DER). Seeds (testdata/fuzz/FuzzPackage) are real packages
// with the CA that signed them, so mutations start from a package that
// verifies all the way. Nothing may panic; a package that verifies must
// have proven what it reports, and its members must decode on their own.
// Inputs are ~17 KB and each run checks signatures, so minimizing a new
// input takes minutes: fuzz with -fuzzminimizetime 1x.
func FuzzPackage(f *testing.F) {
	f.Add([]byte{}, []byte{})
	f.Add([]byte{0xa4, 0x01, 0x60}, []byte{})
	f.Fuzz(func(t *testing.T, data, caDER []byte) {
		p, err := parsePackage(data)
		if err != nil {
			return
		}
		// The member decoders, without the signature in the way.
		rep := PackageReport{}
		batches := map[string]*wire.Batch{}
		if ca, err := x509.ParseCertificate(caDER); err == nil && ca.IsCA {
			for _, m := range p.file.Members {
				if len(m.Name) > len(batchPrefix) && m.Name[:len(batchPrefix)] == batchPrefix {
					if b, _, err := verifyBatch(m.Name, m.Data, ca); err == nil {
						batches[m.Name] = b
					}
				}
			}
			if cmd, ok := p.members[MemberCommand]; ok {
				verifyCommand(cmd, p.st.Predicate.TraceID, ca)
			}
			verified, err := VerifyPackage(data, ca)
			if err == nil {
				n := 0
				for _, h := range verified.Hosts {
					n += h.Events
				}
				if n != verified.Events || verified.Export.Kind != KindExport || verified.Checkpoint.Size <= verified.Export.Index {
					t.Fatalf("verified package reports %d events (hosts: %d), export %+v, checkpoint size %d", verified.Events, n, verified.Export, verified.Checkpoint.Size)
				}
			}
		}
		var proven map[string]provenEvent
		if raw, ok := p.members[MemberEvents]; ok {
			_, proven, _ = verifyEvents(raw, p.st.Predicate.TraceID, batches, &rep)
		}
		if _, ok := p.members[MemberVerifierKey]; ok {
			if _, ok := p.members[MemberCheckpoint]; ok {
				verifyLedger(p, p.st.Predicate.Center, proven, &rep)
			}
		}
	})
}

// TestWritePackageFuzzSeeds rebuilds testdata/fuzz/FuzzPackage from real
// packages when PACKAGE_WRITE_FUZZ_SEEDS=1; otherwise it checks the seeds
// are there and that the full one still verifies (the verifier judges
// certificates at the package's own time, so it does for good).
func TestWritePackageFuzzSeeds(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzPackage")
	if os.Getenv("PACKAGE_WRITE_FUZZ_SEEDS") != "1" {
		raw, err := os.ReadFile(filepath.Join(dir, "full"))
		if err != nil {
			t.Fatalf("no committed seeds for FuzzPackage (run with PACKAGE_WRITE_FUZZ_SEEDS=1): %v", err)
		}
		lines := strings.Split(strings.TrimSpace(string(raw)), "\n")
		if len(lines) != 3 {
			t.Fatalf("seed full: %d lines", len(lines))
		}
		var args [2][]byte
		for k, l := range lines[1:] {
			q, err := strconv.Unquote(strings.TrimSuffix(strings.TrimPrefix(l, "[]byte("), ")"))
			if err != nil {
				t.Fatalf("seed full, argument %d: %v", k, err)
			}
			args[k] = []byte(q)
		}
		ca, err := x509.ParseCertificate(args[1])
		if err != nil {
			t.Fatal(err)
		}
		if _, err := VerifyPackage(args[0], ca); err != nil {
			t.Errorf("committed seed package no longer verifies: %v", err)
		}
		return
	}
	e := newPkgEnv(t)
	ca := e.ca.Certificate().Raw
	full := e.build()
	if _, err := e.verify(full); err != nil {
		t.Fatal(err)
	}
	e.useBatches(e.in.Batches[0], e.seal("web-1", 11, e.traced(6, capture.KindExit)))
	e.in.Command = nil
	gap := e.build()
	if _, err := e.verify(gap); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for name, b := range map[string][]byte{"full": full, "gap-no-command": gap, "truncated": full[:len(full)/3]} {
		content := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n[]byte(%q)\n", b, ca)
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
