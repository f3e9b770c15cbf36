package treetest

import (
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"maps"
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
	ut, _ := strconv.ParseInt(f[11], 10, 64)        // field 14, utime, in clock ticks
	st, _ := strconv.ParseInt(f[12], 10, 64)        // field 15, stime
	return time.Duration(ut+st) * time.Second / 100 // USER_HZ is 100 on Linux
}

// natsPayloads are the sealed batches to publish, per agent: those of the
// DaemonEye run just before (byte for byte what its center stored), or, when
// this runs alone, as many 2000-event realistic batches sealed here.
func natsPayloads(b *testing.B, perAgent int) (map[string][][]byte, int64) {
	b.Helper()
	if lp := lastPipeline; lp != nil && len(lp.sealed) > 0 {
		return lp.sealed, lp.events
	}
	tr := New(b)
	out := map[string][][]byte{}
	var events int64
	for i := range pipelineAgents {
		name := fmt.Sprintf("agent-%d", i)
		files := tr.Issue(pki.RoleAgent, name)
		cert, err := pki.LoadKeyPair(files.Cert, files.Key)
		if err != nil {
			b.Fatal(err)
		}
		key := cert.PrivateKey.(ed25519.PrivateKey)
		pool := eventPool(uint64(i+1), 8)
		for k := range max(1, perAgent/emitChunk) {
			sealed, err := wire.SealBatchCert(name, uint64(k+2), pool[k%len(pool)], key, cert.Certificate[0], true)
			if err != nil {
				b.Fatal(err)
			}
			out[name] = append(out[name], sealed)
			events += emitChunk
		}
	}
	return out, events
}

// benchNATS publishes the sealed batches to a JetStream stream on file
// storage, one publisher (own connection) per agent as our agents have one
// link each, asynchronously with a bounded in-flight window, and waits for
// every ack. Each message carries (agent, seq) as its Nats-Msg-Id, so the
// server deduplicates as our center does.
func benchNATS(b *testing.B, perAgent int) {
	payloads, events := natsPayloads(b, perAgent)
	agents := slices.Sorted(maps.Keys(payloads))
	var msgs int
	var bytes int64
	for _, a := range agents {
		msgs += len(payloads[a])
		for _, p := range payloads[a] {
			bytes += int64(len(p))
		}
	}
	var wall, cpu time.Duration
	for range b.N {
		w, c := runNATS(b, agents, payloads, msgs)
		wall += w
		cpu += c
	}
	n := float64(events) * float64(b.N)
	rate, cpuRate := n/wall.Seconds(), n/cpu.Seconds()
	b.ReportMetric(rate, "events/s")
	b.ReportMetric(cpuRate, "events/cpu-s")
	b.ReportMetric(float64(bytes)/float64(events), "B/event")
	if pipelineRate > 0 {
		b.ReportMetric(pipelineRate/rate, "daemoneye/nats")
		b.ReportMetric(pipelineCPURate/cpuRate, "daemoneye/nats-cpu")
		b.Logf("daemoneye %.0f events/s vs NATS JetStream %.0f events/s: ratio %.2f (per CPU-second %.0f vs %.0f: %.2f)",
			pipelineRate, rate, pipelineRate/rate, pipelineCPURate, cpuRate, pipelineCPURate/cpuRate)
	}
}

// runNATS is one publish run on a fresh server; it returns the wall time
// from the first publish to the last ack and the CPU time of this process
// (the publishers) plus the server's.
func runNATS(b *testing.B, agents []string, payloads map[string][][]byte, msgs int) (time.Duration, time.Duration) {
	b.Helper()
	srv := startNATS(b)
	ctx, cancel := context.WithTimeout(context.Background(), 150*time.Second)
	defer cancel()
	nc, err := nats.Connect(srv.url)
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name:     "BATCHES",
		Subjects: []string{"batches.>"},
		Storage:  jetstream.FileStorage,
	}); err != nil {
		b.Fatalf("create stream: %v", err)
	}
	type pub struct {
		nc *nats.Conn
		js jetstream.JetStream
	}
	pubs := make([]pub, len(agents))
	for i := range agents {
		c, err := nats.Connect(srv.url)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		j, err := jetstream.New(c, jetstream.WithPublishAsyncMaxPending(natsWindow))
		if err != nil {
			b.Fatal(err)
		}
		pubs[i] = pub{c, j}
	}

	cpu0, scpu0 := cpuTime(), srv.cpu()
	start := time.Now()
	errc := make(chan error, len(agents))
	for i, agent := range agents {
		go func() {
			js := pubs[i].js
			futures := make([]jetstream.PubAckFuture, 0, len(payloads[agent]))
			for k, p := range payloads[agent] {
				f, err := js.PublishAsync("batches."+agent, p, jetstream.WithMsgID(fmt.Sprintf("%s/%d", agent, k)))
				if err != nil {
					errc <- fmt.Errorf("publish %s #%d: %w", agent, k, err)
					return
				}
				futures = append(futures, f)
			}
			select {
			case <-js.PublishAsyncComplete():
			case <-ctx.Done():
				errc <- fmt.Errorf("%s: acks: %w", agent, ctx.Err())
				return
			}
			for k, f := range futures {
				select {
				case <-f.Ok():
				case err := <-f.Err():
					errc <- fmt.Errorf("publish %s #%d: %w", agent, k, err)
					return
				}
			}
			errc <- nil
		}()
	}
	var errs []error
	for range agents {
		errs = append(errs, <-errc)
	}
	wall := time.Since(start)
	cpu := cpuTime() - cpu0 + srv.cpu() - scpu0
	if err := errors.Join(errs...); err != nil {
		b.Fatal(err)
	}
	st, err := js.Stream(ctx, "BATCHES")
	if err != nil {
		b.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		b.Fatal(err)
	}
	if info.State.Msgs != uint64(msgs) {
		b.Fatalf("stream holds %d messages, want %d", info.State.Msgs, msgs)
	}
	b.Logf("nats-jetstream: %d messages (%d MB) stored and acked after %v", msgs, info.State.Bytes>>20, wall.Round(time.Millisecond))
	return wall, cpu
}
