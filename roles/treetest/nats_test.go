package treetest

import (
	"context"
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
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// natsWindow bounds the publishes in flight per publisher: the same window
// our uplink keeps per lane (transport.UplinkConfig.Window default).
const natsWindow = 256

// natsRounds is how many times the batch set is published (each time under
// new message ids): one round takes well under a second, too short to time
// on a noisy machine. NATS_ROUNDS overrides it.
const natsRounds = 5

// natsServer is a nats-server child process with JetStream on file storage.
type natsServer struct {
	cmd  *exec.Cmd
	url  string
	log  string
	stop func()
}

// natsBinary finds Debian's nats-server.
func natsBinary() (string, error) {
	bin, err := exec.LookPath("nats-server")
	if err != nil {
		return "", fmt.Errorf("nats-server not installed (bash testdata/bench/nats.sh installs it): %w", err)
	}
	return bin, nil
}

// startNATS runs nats-server on a loopback port with JetStream file storage
// in a temp dir; it is killed when the benchmark ends, also on failure.
func startNATS(tb testing.TB, bin string) *natsServer {
	tb.Helper()
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
	var once sync.Once
	s := &natsServer{cmd: cmd, url: fmt.Sprintf("nats://127.0.0.1:%d", port), log: logPath, stop: func() {
		once.Do(func() {
			cmd.Process.Kill()
			cmd.Wait()
			logf.Close()
		})
	}}
	tb.Cleanup(s.stop)
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

// benchNATS publishes the sealed batches of a DaemonEye run (byte for byte
// what its center stored) to a JetStream stream on file storage: one
// publisher with its own connection per agent, as each agent has one link,
// asynchronous with a bounded in-flight window, waiting for every ack. Each
// message carries (agent, seq) as its Nats-Msg-Id, so the server
// deduplicates as our center does. The set is published natsRounds times.
func benchNATS(b *testing.B, bin string, payloads map[string][][]byte, events int64) pipelineResult {
	b.Helper()
	agents := slices.Sorted(maps.Keys(payloads))
	var msgs int
	var bytes int64
	for _, a := range agents {
		msgs += len(payloads[a])
		for _, p := range payloads[a] {
			bytes += int64(len(p))
		}
	}
	rounds := envInt("NATS_ROUNDS", natsRounds)
	wall, cpu := runNATS(b, bin, agents, payloads, msgs, rounds)
	return pipelineResult{events: events * int64(rounds), wall: wall, cpu: cpu, bytes: bytes * int64(rounds)}
}

// runNATS is one publish run on a fresh server; it returns the wall time
// from the first publish to the last ack and the CPU time of this process
// (the publishers) plus the server's.
func runNATS(b *testing.B, bin string, agents []string, payloads map[string][][]byte, msgs, rounds int) (time.Duration, time.Duration) {
	b.Helper()
	srv := startNATS(b, bin)
	defer srv.stop()
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
			futures := make([]jetstream.PubAckFuture, 0, rounds*len(payloads[agent]))
			for r := range rounds {
				for k, p := range payloads[agent] {
					f, err := js.PublishAsync("batches."+agent, p, jetstream.WithMsgID(fmt.Sprintf("%s/%d/%d", agent, r, k)))
					if err != nil {
						errc <- fmt.Errorf("publish %s #%d: %w", agent, k, err)
						return
					}
					futures = append(futures, f)
				}
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
	if want := uint64(msgs * rounds); info.State.Msgs != want {
		b.Fatalf("stream holds %d messages, want %d", info.State.Msgs, want)
	}
	b.Logf("nats-jetstream: %d messages (%d rounds of %d, %d MB) stored and acked after %v",
		info.State.Msgs, rounds, msgs, info.State.Bytes>>20, wall.Round(time.Millisecond))
	return wall, cpu
}
