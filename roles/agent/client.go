package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/privacy"
	"github.com/evilbitlabs/daemoneye/store"
)

// Inspector answers read-only questions about a host's processes: from the
// running agent's socket when there is one, else from the agent's store, else
// from a live /proc scan. Origin says which.
type Inspector struct {
	Origin string // "agent", "store" or "proc"

	dataDir string
	http    *http.Client
	st      *store.Local
	mem     *memTable
	who     string
}

// OpenInspector finds the best way to inspect the host.
func OpenInspector(dataDir, procRoot string, argvMax int) (*Inspector, error) {
	sock := filepath.Join(dataDir, SocketName)
	if c, err := net.DialTimeout("unix", sock, time.Second); err == nil {
		c.Close()
		hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", sock)
			},
		}}
		return &Inspector{Origin: "agent", dataDir: dataDir, http: hc}, nil
	}
	who := fmt.Sprintf("uid=%d pid=%d (offline)", os.Getuid(), os.Getpid())
	if _, err := os.Stat(filepath.Join(dataDir, "store")); err == nil {
		st, err := store.OpenLocalReadOnly(filepath.Join(dataDir, "store"))
		if err == nil {
			return &Inspector{Origin: "store", dataDir: dataDir, st: st, who: who}, nil
		}
		if !errors.Is(err, store.ErrLocked) {
			return nil, fmt.Errorf("open agent store: %w", err)
		}
	}
	procs, err := capture.Seed(procRoot, argvMax)
	if err != nil {
		return nil, fmt.Errorf("scan %s: %w", procRoot, err)
	}
	return &Inspector{Origin: "proc", dataDir: dataDir, mem: newMemTable(procs), who: who}, nil
}

// Close releases the store, if one was opened.
func (i *Inspector) Close() error {
	if i.st != nil {
		return i.st.Close()
	}
	return nil
}

func (i *Inspector) get(path string, q url.Values) ([]byte, error) {
	resp, err := i.http.Get("http://agent" + path + "?" + q.Encode())
	if err != nil {
		return nil, fmt.Errorf("agent socket: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<30))
	if err != nil {
		return nil, fmt.Errorf("agent socket: %w", err)
	}
	if resp.StatusCode == http.StatusNotFound {
		return nil, fmt.Errorf("%s: %w", strings.TrimSpace(string(body)), ErrNoProcess)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("agent: %s", strings.TrimSpace(string(body)))
	}
	return body, nil
}

func revealQuery(rv privacy.Reveal) url.Values {
	q := url.Values{}
	if rv.On {
		q.Set("reveal", "1")
		q.Set("reason", rv.Reason)
	}
	return q
}

func (i *Inspector) offlineReveal(rv privacy.Reveal, target string) (bool, error) {
	if err := rv.Check(); err != nil || !rv.On {
		return false, err
	}
	if err := os.MkdirAll(i.dataDir, 0o700); err != nil {
		return false, fmt.Errorf("record reveal: %w", err)
	}
	return true, auditReveal(i.dataDir, i.who, rv.Reason, target)
}

// Processes lists the process table (live, and exited too when asked).
func (i *Inspector) Processes(includeExited bool, rv privacy.Reveal) ([]View, error) {
	if err := rv.Check(); err != nil {
		return nil, err
	}
	if i.http != nil {
		q := revealQuery(rv)
		if includeExited {
			q.Set("exited", "1")
		}
		body, err := i.get("/v1/processes", q)
		if err != nil {
			return nil, err
		}
		var vs []View
		if err := wireDec.Unmarshal(body, &vs); err != nil {
			return nil, fmt.Errorf("agent socket: %w", err)
		}
		return vs, nil
	}
	rev, err := i.offlineReveal(rv, "all processes")
	if err != nil {
		return nil, err
	}
	var ps []capture.Process
	if i.st != nil {
		ps, err = i.st.Processes(includeExited)
	} else {
		ps, err = i.mem.Processes(includeExited)
	}
	if err != nil {
		return nil, err
	}
	return maskAll(ps, rev), nil
}

// Lineage returns the ancestors and descendants of pid.
func (i *Inspector) Lineage(pid uint32, rv privacy.Reveal) (Lineage, error) {
	if err := rv.Check(); err != nil {
		return Lineage{}, err
	}
	if i.http != nil {
		q := revealQuery(rv)
		q.Set("pid", strconv.FormatUint(uint64(pid), 10))
		body, err := i.get("/v1/lineage", q)
		if err != nil {
			return Lineage{}, err
		}
		var l Lineage
		if err := wireDec.Unmarshal(body, &l); err != nil {
			return Lineage{}, fmt.Errorf("agent socket: %w", err)
		}
		return l, nil
	}
	rev, err := i.offlineReveal(rv, "lineage of pid "+strconv.FormatUint(uint64(pid), 10))
	if err != nil {
		return Lineage{}, err
	}
	if i.st != nil {
		return lineageOf(i.st, pid, rev)
	}
	return lineageOf(i.mem, pid, rev)
}

// memTable answers lineage queries over a /proc snapshot.
type memTable struct {
	byKey    map[capture.ProcKey]capture.Process
	children map[capture.ProcKey][]capture.ProcKey
}

func newMemTable(procs []capture.Process) *memTable {
	m := &memTable{byKey: map[capture.ProcKey]capture.Process{}, children: map[capture.ProcKey][]capture.ProcKey{}}
	for _, p := range procs {
		m.byKey[p.Key] = p
		m.children[p.Parent] = append(m.children[p.Parent], p.Key)
	}
	return m
}

func (m *memTable) LiveByPID(pid uint32) (capture.Process, bool, error) {
	for k, p := range m.byKey {
		if k.PID == pid && p.Alive() {
			return p, true, nil
		}
	}
	return capture.Process{}, false, nil
}

func (m *memTable) Processes(bool) ([]capture.Process, error) {
	out := make([]capture.Process, 0, len(m.byKey))
	for _, p := range m.byKey {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key.PID < out[j].Key.PID })
	return out, nil
}

func (m *memTable) Ancestors(key capture.ProcKey) ([]capture.Process, error) {
	var out []capture.Process
	seen := map[capture.ProcKey]bool{key: true}
	for k := m.byKey[key].Parent; !seen[k] && len(out) < 4096; {
		p, ok := m.byKey[k]
		if !ok {
			break
		}
		seen[k] = true
		out = append(out, p)
		k = p.Parent
	}
	return out, nil
}

func (m *memTable) Descendants(key capture.ProcKey, maxDepth int) ([]capture.Process, error) {
	var out []capture.Process
	level := []capture.ProcKey{key}
	seen := map[capture.ProcKey]bool{key: true}
	for d := 0; d < maxDepth && len(level) > 0; d++ {
		var next []capture.ProcKey
		for _, k := range level {
			for _, c := range m.children[k] {
				if !seen[c] {
					seen[c] = true
					out = append(out, m.byKey[c])
					next = append(next, c)
				}
			}
		}
		level = next
	}
	return out, nil
}

// Stats asks the running agent for its figures.
func (i *Inspector) Stats() (Stats, error) {
	if i.http == nil {
		return Stats{}, fmt.Errorf("the agent is not running (no socket at %s)", filepath.Join(i.dataDir, SocketName))
	}
	body, err := i.get("/v1/stats", url.Values{})
	if err != nil {
		return Stats{}, err
	}
	var st Stats
	if err := json.Unmarshal(body, &st); err != nil {
		return Stats{}, fmt.Errorf("agent socket: %w", err)
	}
	return st, nil
}
