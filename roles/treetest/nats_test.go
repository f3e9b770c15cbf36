package treetest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// natsWindow bounds the publishes in flight per publisher: the same window
// our uplink keeps per lane (transport.UplinkConfig.Window default).
const natsWindow = 256

// natsServer is a nats-server child process with JetStream on file storage.
type natsServer struct {
	cmd *exec.Cmd
	url string
	log string
}

// startNATS runs Debian's nats-server on a loopback port with JetStream file
// storage in a temp dir; it is killed when the benchmark ends, also on
// failure. Without the binary the benchmark skips, unless CI is set: there
// a missing comparison is a failure, not a skip.
func startNATS(tb testing.TB) *natsServer {
	tb.Helper()
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		if os.Getenv("CI") != "" {
			tb.Fatalf("nats-server not found (CI is set, so this fails instead of skipping): install it with testdata/bench/nats.sh (apt-get install -y nats-server)")
		}
		tb.Skip("nats-server not installed: skipping the NATS JetStream comparison (bash testdata/bench/nats.sh installs it)")
	}
	dir := tb.TempDir()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	logPath := filepath.Join(dir, "nats-server.log")
	logf, err := os.Create(logPath)
	if err != nil {
		tb.Fatal(err)
	}
	cmd := exec.Command(bin, "-a", "127.0.0.1", "-p", strconv.Itoa(port), "-js", "-sd", filepath.Join(dir, "js"))
	cmd.Stdout, cmd.Stderr = logf, logf
	// If this process dies without running cleanups (a test timeout), the
	// kernel kills the server too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		logf.Close()
		tb.Fatalf("start nats-server: %v", err)
	}
	s := &natsServer{cmd: cmd, url: fmt.Sprintf("nats://127.0.0.1:%d", port), log: logPath}
	tb.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
	})
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		nc, err := nats.Connect(s.url)
		if err == nil {
			nc.Close()
			return s
		}
		if time.Now().After(deadline) {
			out, _ := os.ReadFile(logPath)
			tb.Fatalf("nats-server did not answer within 15s: %v\n%s", err, out)
		}
	}
}

// cpu is the server process's user+system CPU time so far.
func (s *natsServer) cpu() time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", s.cmd.Process.Pid))
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // field 14, utime, in clock ticks
	st, _ := strconv.ParseInt(f[12], 10, 64) // field 15, stime
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// natsPayloads are the sealed batches to publish: those of the DaemonEye run
// just before (byte for byte what its center stored), or, when this runs
// alone, the same number of 2000-event realistic batches sealed here.
func natsPayloads(b *testing.B, perAgent int) (map[string][][]byte, int64) {
	if lp := lastPipeline; lp != nil && len(lp.sealed) > 0 {
		var n int64
		for _, bs := range lp.sealed {
			n += int64(len(bs))
		}
		return lp.sealed, lp.events * int64(len(lp.sealed)) / int64(len(lp.sealed)) / max(1, int64(b.N))
	}
	tr := New(b)
	out := map[string][][]byte{}
	var events int64
	for i := range pipelineAgents {
		name := fmt.Sprintf("agent-%d", i)
		tlsFiles := tr.Issue(pki.RoleAgent, name)
		cert, err := pki.LoadKeyPair(tlsFiles.Cert, tlsFiles.Key)
		if err != nil {
			b.Fatal(err)
		}
		pool := eventPool(uint64(i+1), 8)
		for k := range max(1, perAgent/emitChunk) {
			sealed, err := wire.SealBatchCert(name, uint64(k+2), pool[k%len(pool)], cert.PrivateKey.(interface{}).(interface{ Seed() []byte }).(ed25519Key), cert.Certificate[0], true)
			if err != nil {
				b.Fatal(err)
			}
			out[name] = append(out[name], sealed)
			events += emitChunk
		}
	}
	return out, events
}
