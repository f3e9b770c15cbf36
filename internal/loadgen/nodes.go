package loadgen

// The center and the proxies run as child processes of the generator: the
// real `daemoneye center` and `daemoneye proxy`, each with its own
// configuration file, certificate and data directory, so that the kernel
// (not one Go scheduler shared with a thousand simulated agents) shares the
// cores between them, and each role's CPU and memory are its process's.

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// node is one child process: the center or a proxy.
type node struct {
	name    string
	role    string // "center" or "proxy"
	level   int    // 0 center, 1 under the center, 2 under a level-1 proxy
	dir     string // its data directory
	cfgPath string
	logPath string
	listen  string // QUIC address children connect to
	api     string // the center's API address (host:port)
	metrics string // a proxy's metrics address (host:port)

	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
	err  error         // its exit status, once done
}

// start runs the node's process: bin [wrap...] ROLE -c CONFIG, its output
// in its log file. wrap is the profiling prefix (bench profile --out F).
func (n *node) start(bin string, env []string, wrap []string) error {
	logf, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logf.Close()
	args := append(append([]string{}, wrap...), n.role, "-c", n.cfgPath)
	n.cmd = exec.Command(bin, args...)
	n.cmd.Env = env
	n.cmd.Stdout, n.cmd.Stderr = logf, logf
	// Its own process group, and killed if the generator dies without
	// stopping it.
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := n.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", n.name, err)
	}
	n.done = make(chan struct{})
	go func() {
		n.err = n.cmd.Wait()
		close(n.done)
	}()
	return nil
}

func (n *node) exited() bool {
	if n.done == nil {
		return true
	}
	select {
	case <-n.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM (the role drains and closes its stores) and waits;
// after within it kills the process group.
func (n *node) stop(within time.Duration) error {
	if n.cmd == nil || n.cmd.Process == nil || n.exited() {
		return n.exitErr()
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
		return n.exitErr()
	case <-time.After(within):
		syscall.Kill(-n.cmd.Process.Pid, syscall.SIGKILL)
		<-n.done
		return fmt.Errorf("%s did not stop within %s after SIGTERM: killed", n.name, within)
	}
}

func (n *node) exitErr() error {
	if n.err != nil {
		return fmt.Errorf("%s: %w (log: %s)", n.name, n.err, n.logPath)
	}
	return nil
}

// tail returns the end of the node's log, for error messages.
func (n *node) tail() string {
	b, err := os.ReadFile(n.logPath)
	if err != nil {
		return ""
	}
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// usage is what /proc says of a process: CPU time (user + system) and
// memory (VmRSS now, VmHWM the peak).
type usage struct {
	CPU      time.Duration
	RSS, HWM int64
}

func (u usage) add(v usage) usage {
	return usage{CPU: u.CPU + v.CPU, RSS: u.RSS + v.RSS, HWM: u.HWM + v.HWM}
}

// clockTick is USER_HZ, the unit of /proc/PID/stat's times: 100 on every
// Linux architecture Go supports.
const clockTick = 10 * time.Millisecond

// procUsage reads /proc/PID/stat and /proc/PID/status.
func procUsage(pid int) (usage, error) {
	var u usage
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return u, err
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// fields are counted after its closing one (field 3, state, first).
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return u, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return u, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64) // field 14, utime
	st, err2 := strconv.ParseInt(f[12], 10, 64) // field 15, stime
	if err := errors.Join(err1, err2); err != nil {
		return u, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	u.CPU = time.Duration(ut+st) * clockTick
	u.RSS, u.HWM, err = statusMem(fmt.Sprintf("/proc/%d/status", pid))
	return u, err
}

// statusMem reads VmRSS and VmHWM (kB) of a /proc status file.
func statusMem(path string) (rss, hwm int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("%s: %s: %w", path, k, err)
		}
		if k == "VmRSS" {
			rss = n << 10
		} else {
			hwm = n << 10
		}
	}
	return rss, hwm, sc.Err()
}

// usage returns the node's /proc figures, zero once it has exited.
func (n *node) usage() usage {
	if n.cmd == nil || n.cmd.Process == nil || n.exited() {
		return usage{}
	}
	u, _ := procUsage(n.cmd.Process.Pid)
	return u
}

// waitTCP waits until addr accepts TCP connections or the node exits.
func (n *node) waitTCP(ctx context.Context, addr string, within time.Duration) error {
	deadline := time.Now().Add(within)
	for {
		c, err := net.DialTimeout("tcp", addr, time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		if n.exited() {
			return fmt.Errorf("%s exited: %v\n%s", n.name, n.exitErr(), n.tail())
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %s not listening after %s: %w", n.name, addr, within, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// scrape reads a proxy's Prometheus metrics and sums each metric over its
// labels (queue depth over lanes, say).
func scrape(ctx context.Context, addr string) (map[string]float64, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, "GET", "http://"+addr+"/metrics", nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("metrics %s: HTTP %d", addr, resp.StatusCode)
	}
	return parseMetrics(io.LimitReader(resp.Body, 4<<20))
}

// parseMetrics reads the Prometheus text format: "name{labels} value".
func parseMetrics(r io.Reader) (map[string]float64, error) {
	out := map[string]float64{}
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		sp := strings.LastIndexByte(line, ' ')
		if sp < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[sp+1:], 64)
		if err != nil {
			continue
		}
		name := line[:sp]
		if i := strings.IndexAny(name, "{ \t"); i >= 0 {
			name = name[:i]
		}
		if name == "" {
			continue
		}
		out[name] += v
	}
	return out, sc.Err()
}

// childEnv is the children's environment: ours without DAEMONEYE_
// settings (their configuration is their file), plus extra.
func childEnv(extra []string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "DAEMONEYE_") {
			env = append(env, kv)
		}
	}
	return append(env, extra...)
}

// freeTCP returns a free loopback TCP address.
func freeTCP() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// writeConfig writes a node's YAML configuration.
func writeConfig(path, yaml string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(yaml), 0o600)
}
