package treetest

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/internal/testenv"
	"github.com/evilbitlabs/daemoneye/transport/pki"
)

// procProxy is a proxy running as its own process, to be killed for real.
type procProxy struct {
	t      *testing.T
	bin    string
	cfg    string
	Listen string
	cmd    *exec.Cmd
	log    string
}

func (tr *Tree) newProcProxy(t *testing.T, name, parent string) *procProxy {
	tc := tr.Issue(pki.RoleProxy, name)
	dir := filepath.Join(tr.Dir, name)
	os.MkdirAll(dir, 0o700)
	p := &procProxy{t: t, bin: testenv.Binary(t), Listen: FreeAddr(t), log: filepath.Join(dir, "proxy.log")}
	p.cfg = filepath.Join(dir, "daemoneye.yaml")
	yaml := fmt.Sprintf(`proxy:
  listen: %s
  upstream: %s
  wal_path: %s
  fsync_interval_ms: 10
  metrics:
    listen: ""
  tls:
    cert: %s
    key: %s
    ca: %s
`, p.Listen, parent, filepath.Join(dir, "wal"), tc.Cert, tc.Key, tc.CA)
	if err := os.WriteFile(p.cfg, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.kill)
	return p
}

func (p *procProxy) start() {
	p.t.Helper()
	logf, err := os.OpenFile(p.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		p.t.Fatal(err)
	}
	defer logf.Close()
	p.cmd = exec.Command(p.bin, "proxy", "-c", p.cfg)
	p.cmd.Stdout, p.cmd.Stderr = logf, logf
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := p.cmd.Start(); err != nil {
		p.t.Fatal(err)
	}
}

// kill sends SIGKILL: no drain, no flush, whatever was in flight is cut.
func (p *procProxy) kill() {
	if p.cmd == nil || p.cmd.Process == nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.cmd.Wait()
	p.cmd = nil
}

// kill -9 a proxy process in the middle of a stream and restart it: every
// batch arrives at the center exactly once (the sets of (agent, seq) match).
func TestProxyKill9MidStream(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center").Start()
	px := tr.newProcProxy(t, "px", c.Cfg.Listen)
	px.start()
	var agents []*Agent
	for i := 0; i < 2; i++ {
		agents = append(agents, tr.NewAgent(fmt.Sprintf("web-%d", i), px.Listen).Start())
	}
	stream := func(d time.Duration) {
		for end := time.Now().Add(d); time.Now().Before(end); time.Sleep(10 * time.Millisecond) {
			for _, a := range agents {
				a.Emit(300)
			}
		}
	}
	stream(time.Second)
	for kill := 0; kill < 2; kill++ {
		px.kill()
		stream(300 * time.Millisecond) // agents keep recording while the proxy is dead
		px.start()
		stream(700 * time.Millisecond)
	}
	if m := WaitAll(c, 60*time.Second, agents...); m != "" {
		log, _ := os.ReadFile(px.log)
		t.Fatalf("after two kill -9: %s\nproxy log tail:\n%s", m, tail(string(log), 20))
	}
	checkExact(t, c, agents...)
	b, ev, replays := c.Ingest.Counts()
	t.Logf("center stored %d batches (%d events); %d replays dropped", b, ev, replays)
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// emitRandom stores n events whose arguments do not compress, so that the
// WAL fills a disk for real.
func emitRandom(t *testing.T, a *Agent, n int) {
	evs := make([]capture.Event, n)
	buf := make([]byte, 96)
	for i := range evs {
		rand.Read(buf)
		evs[i] = capture.Event{Time: time.Now().UnixNano(), Kind: capture.KindExec,
			Proc: capture.ProcKey{PID: uint32(i + 2), Start: uint64(i)}, Exec: &capture.Exec{Exe: "/bin/x", Argv: []string{"x", hex.EncodeToString(buf)}}}
	}
	if _, _, err := a.Store.Append(evs); err != nil {
		t.Fatal(err)
	}
	a.Ship.Kick()
}

// A proxy's WAL on a small filesystem: with the center away the WAL fills
// up to the high watermark, then bulk is refused (counted) while the proxy
// stays up and the agent keeps what was refused; once the center is back
// everything arrives exactly once.
func TestProxyDiskWatermark(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("CI: this test mounts a tmpfs and needs root")
		}
		t.Skip("needs root to mount a tmpfs")
	}
	tr := New(t)
	mnt := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", mnt).CombinedOutput(); err != nil {
		t.Fatalf("mount tmpfs: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", mnt).Run() })

	c := tr.NewCenter("center")
	px := tr.NewProxy("px", c.Cfg.Listen)
	px.Cfg.WALPath = filepath.Join(mnt, "wal")
	px.Cfg.Watermarks.High, px.Cfg.Watermarks.Low = 0.5, 0.4
	px.Start()
	a := tr.NewAgent("web", px.Cfg.Listen).Start()

	refused := func() float64 {
		return metric(t, px, "daemoneye_proxy_refused_batches_total", `cause="over_watermark"`)
	}
	for deadline := time.Now().Add(60 * time.Second); refused() == 0; {
		if time.Now().After(deadline) {
			t.Fatalf("bulk never refused; proxy WAL at %.0f bytes", metric(t, px, "daemoneye_proxy_wal_disk_bytes", ""))
		}
		emitRandom(t, a, 2000)
		time.Sleep(20 * time.Millisecond)
	}
	queued := a.Ship.Stats().Queue.Lanes[3].Entries
	t.Logf("proxy refused bulk above its watermark; the agent holds %d batches meanwhile", queued)
	if queued == 0 {
		t.Error("the agent holds nothing: refused batches must stay with the sender")
	}
	c.Start()
	if m := WaitAll(c, 90*time.Second, a); m != "" {
		t.Fatalf("after the center came back: %s", m)
	}
	checkExact(t, c, a)
}

// metric reads one value from a proxy's Prometheus figures; labels is a
// substring of the formatted labels (`cause="over_watermark"`), "" for none.
func metric(t *testing.T, px *Proxy, name, labels string) float64 {
	t.Helper()
	fams, err := px.Gatherer().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fams {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			var ls []string
			for _, l := range m.GetLabel() {
				ls = append(ls, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
			}
			if labels != "" && !strings.Contains(strings.Join(ls, ","), labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue()
			case m.Gauge != nil:
				return m.Gauge.GetValue()
			}
		}
	}
	return 0
}
