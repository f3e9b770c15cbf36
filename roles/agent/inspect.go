package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/privacy"
	"github.com/evilbitlabs/daemoneye/store"
)

// View is a process as an operator may see it: unless the request
// revealed it, Argv holds what the masking policy shows (privacy.Policy.
// Mask: argv[0], or the arguments with secret values replaced) and
// MaskedArgs counts the arguments withheld after them.
type View struct {
	capture.Process
	MaskedArgs int `cbor:"20,keyasint,omitempty"`
}

// Lineage is a process with its ancestors (oldest first) and descendants.
type Lineage struct {
	Target      View   `cbor:"1,keyasint"`
	Ancestors   []View `cbor:"2,keyasint"`
	Descendants []View `cbor:"3,keyasint"`
}

// Stats is what `daemoneye agent status` prints.
type Stats struct {
	Source      string            `json:"source"`
	Blind       []string          `json:"blind,omitempty"`
	Lost        map[string]uint64 `json:"lost"`
	Stored      uint64            `json:"events_stored"`
	Seeded      int64             `json:"seeded_processes"`
	SeedMillis  float64           `json:"seed_ms"`
	Store       store.Stats       `json:"store"`
	StoreErrors uint64            `json:"store_errors"`
}

// Argv may hold any bytes, so the socket speaks CBOR with byte strings
// (JSON would replace invalid UTF-8).
var (
	wireEnc, _ = cbor.EncOptions{String: cbor.StringToByteString}.EncMode()
	wireDec, _ = cbor.DecOptions{
		ByteStringToString: cbor.ByteStringToStringAllowed,
		MaxArrayElements:   1 << 22,
		MaxNestedLevels:    16,
	}.DecMode()
)

func mask(p capture.Process, reveal bool) View {
	v := View{Process: p}
	if !reveal && len(p.Exec.Argv) > 0 {
		v.Exec.Argv, v.MaskedArgs, _ = privacy.Default().Mask(p.Exec.Argv)
	}
	return v
}

func maskAll(ps []capture.Process, reveal bool) []View {
	out := make([]View, len(ps))
	for i, p := range ps {
		out[i] = mask(p, reveal)
	}
	return out
}

// Command renders the view's command line for a terminal.
func (v View) Command() string {
	argv := v.Exec.Argv
	if len(argv) == 0 {
		return "[" + privacy.Safe(v.Comm) + "]"
	}
	return privacy.Render(argv, v.MaskedArgs)
}

// auditReveal records who revealed arguments and why, in the data directory's
// append-only audit file and the log. The center's ledger takes over once
// the agent has an uplink.
func auditReveal(dataDir string, who string, reason string, target string) error {
	rec, _ := json.Marshal(map[string]any{
		"time": time.Now().UTC().Format(time.RFC3339Nano), "action": "reveal_args",
		"by": who, "reason": reason, "target": target,
	})
	f, err := os.OpenFile(filepath.Join(dataDir, "audit.log"), os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o600)
	if err != nil {
		return fmt.Errorf("record reveal: %w", err)
	}
	defer f.Close()
	if _, err := f.Write(append(rec, '\n')); err != nil {
		return fmt.Errorf("record reveal: %w", err)
	}
	return f.Sync()
}

type peerKey struct{}

func (a *Agent) listenSocket() (net.Listener, error) {
	path := filepath.Join(a.cfg.DataDir, SocketName)
	os.Remove(path) // a stale socket from a crash
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("agent: inspection socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("agent: inspection socket: %w", err)
	}
	return ln, nil
}

func (a *Agent) serveSocket(ctx context.Context, ln net.Listener) error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/processes", a.handleProcesses)
	mux.HandleFunc("GET /v1/lineage", a.handleLineage)
	mux.HandleFunc("GET /v1/stats", a.handleStats)
	return serveHTTP(ctx, ln, &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 5 * time.Second,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return context.WithValue(ctx, peerKey{}, peerName(c))
		},
	})
}

// peerName names the local user on the other end of the socket.
func peerName(c net.Conn) string {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return "unknown"
	}
	raw, err := uc.SyscallConn()
	if err != nil {
		return "unknown"
	}
	var cred *syscall.Ucred
	raw.Control(func(fd uintptr) {
		cred, _ = syscall.GetsockoptUcred(int(fd), syscall.SOL_SOCKET, syscall.SO_PEERCRED)
	})
	if cred == nil {
		return "unknown"
	}
	return fmt.Sprintf("uid=%d pid=%d", cred.Uid, cred.Pid)
}

// reveal reads and checks the reveal parameters and audits a granted reveal.
func (a *Agent) reveal(r *http.Request, target string) (bool, error) {
	rv := privacy.Reveal{On: r.URL.Query().Get("reveal") == "1", Reason: r.URL.Query().Get("reason")}
	if err := rv.Check(); err != nil {
		return false, err
	}
	if !rv.On {
		return false, nil
	}
	who, _ := r.Context().Value(peerKey{}).(string)
	a.revealMu.Lock()
	defer a.revealMu.Unlock()
	a.log.Warn("arguments revealed", "by", who, "reason", rv.Reason, "target", target)
	return true, auditReveal(a.cfg.DataDir, who, rv.Reason, target)
}

func writeCBOR(w http.ResponseWriter, v any) {
	b, err := wireEnc.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/cbor")
	w.Write(b)
}

func (a *Agent) handleProcesses(w http.ResponseWriter, r *http.Request) {
	rev, err := a.reveal(r, "all processes")
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ps, err := a.store.Processes(r.URL.Query().Get("exited") == "1")
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	writeCBOR(w, maskAll(ps, rev))
}

func (a *Agent) handleLineage(w http.ResponseWriter, r *http.Request) {
	pid, err := strconv.ParseUint(r.URL.Query().Get("pid"), 10, 32)
	if err != nil {
		http.Error(w, "pid: want a process id", http.StatusBadRequest)
		return
	}
	rev, err := a.reveal(r, "lineage of pid "+strconv.FormatUint(pid, 10))
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	lin, err := lineageOf(a.store, uint32(pid), rev)
	if err != nil {
		code := http.StatusInternalServerError
		if errors.Is(err, ErrNoProcess) {
			code = http.StatusNotFound
		}
		http.Error(w, err.Error(), code)
		return
	}
	writeCBOR(w, lin)
}

func (a *Agent) handleStats(w http.ResponseWriter, r *http.Request) {
	st := a.Stats()
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(st)
}

// Stats reports the agent's figures.
func (a *Agent) Stats() Stats {
	ss, _ := a.store.Stats()
	return Stats{
		Source: a.src.Name(), Blind: a.src.Blind(), Lost: a.Lost(),
		Stored: a.stored.Load(), Seeded: a.seeded.Load(),
		SeedMillis: float64(a.seedTime.Load()) / 1e6, Store: ss, StoreErrors: a.storeErrs.Load(),
	}
}

// ErrNoProcess is returned when no process with the asked pid is known.
var ErrNoProcess = errors.New("no such process in the process table")

// lineageReader is what a lineage query needs from a store.
type lineageReader interface {
	LiveByPID(pid uint32) (capture.Process, bool, error)
	Processes(includeExited bool) ([]capture.Process, error)
	Ancestors(key capture.ProcKey) ([]capture.Process, error)
	Descendants(key capture.ProcKey, maxDepth int) ([]capture.Process, error)
}

func lineageOf(st lineageReader, pid uint32, reveal bool) (Lineage, error) {
	p, ok, err := st.LiveByPID(pid)
	if err != nil {
		return Lineage{}, err
	}
	if !ok {
		// The newest exited incarnation, so a finished process still has a lineage.
		all, err := st.Processes(true)
		if err != nil {
			return Lineage{}, err
		}
		for _, q := range all {
			if q.Key.PID == pid && (!ok || q.Key.Start > p.Key.Start) {
				p, ok = q, true
			}
		}
		if !ok {
			return Lineage{}, fmt.Errorf("pid %d: %w", pid, ErrNoProcess)
		}
	}
	anc, err := st.Ancestors(p.Key)
	if err != nil {
		return Lineage{}, err
	}
	desc, err := st.Descendants(p.Key, 64)
	if err != nil {
		return Lineage{}, err
	}
	// Ancestors come nearest first; a lineage reads from the root down.
	for i, j := 0, len(anc)-1; i < j; i, j = i+1, j-1 {
		anc[i], anc[j] = anc[j], anc[i]
	}
	return Lineage{Target: mask(p, reveal), Ancestors: maskAll(anc, reveal), Descendants: maskAll(desc, reveal)}, nil
}
