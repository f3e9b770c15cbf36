package scenario

import (
	"context"
	"log/slog"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/capture"
	"github.com/evilbitlabs/daemoneye/internal/testnet"
	"golang.org/x/sys/unix"
)

// events runs a capture source until the test ends and keeps its events.
type events struct {
	mu  sync.Mutex
	evs []capture.Event
}

func (e *events) all() []capture.Event {
	e.mu.Lock()
	defer e.mu.Unlock()
	return slices.Clone(e.evs)
}

// openScoped opens a source of kind ("ebpf" or "proc") scoped to host h
// and runs it until the test ends.
func openScoped(t *testing.T, kind string, h *testnet.Host) *events {
	t.Helper()
	opts := capture.DefaultOptions()
	opts.Scope = Scope(h)
	var src capture.Source
	switch kind {
	case "ebpf":
		s, err := capture.NewEBPF(opts, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("NewEBPF as root: %v", err)
		}
		t.Cleanup(func() { s.Close() })
		src = s
	case "proc":
		s, err := capture.NewProc(opts, slog.New(slog.DiscardHandler))
		if err != nil {
			t.Fatalf("NewProc as root: %v", err)
		}
		s.PollInterval = 50 * time.Millisecond
		t.Cleanup(func() { s.Close() })
		src = s
	}
	e := &events{}
	ctx, cancel := context.WithCancel(context.Background())
	out := make(chan capture.Event, 1<<16)
	runDone := make(chan error, 1)
	go func() { runDone <- src.Run(ctx, out) }()
	var wg sync.WaitGroup
	wg.Go(func() {
		for {
			select {
			case ev := <-out:
				e.mu.Lock()
				e.evs = append(e.evs, ev)
				e.mu.Unlock()
			case <-ctx.Done():
				return
			}
		}
	})
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-runDone:
			if err != nil {
				t.Errorf("%s source on %s: Run: %v", kind, h.Name, err)
			}
		case <-time.After(waitTimeout):
			t.Errorf("%s source on %s: Run did not return within %v of cancel", kind, h.Name, waitTimeout)
		}
		wg.Wait()
	})
	return e
}

// waitEvents polls e until check reports nothing missing, or fails the test
// with what is still missing.
func waitEvents(t *testing.T, what string, e *events, check func([]capture.Event) []string) []capture.Event {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for {
		evs := e.all()
		missing := check(evs)
		if len(missing) == 0 {
			return evs
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: after %v still no %s (%d events)", what, waitTimeout, strings.Join(missing, ", "), len(evs))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func nsInode(t *testing.T, h *testnet.Host) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(h.NamespacePath(), &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

// TestScopedSourcesSeeTheirHost runs the attack under two sources of each
// kind, one scoped to web-1 and one to db-1, as the agents of those hosts
// would: each sees its half of the chain and nothing of the other host.
func TestScopedSourcesSeeTheirHost(t *testing.T) {
	needScenario(t)
	s := build(t, Options{})
	www, err := lookupUser(WebUser)
	if err != nil {
		t.Fatal(err)
	}
	ssh22 := netip.AddrPortFrom(s.DB.Addr, 22)
	for _, kind := range []string{"ebpf", "proc"} {
		t.Run(kind, func(t *testing.T) {
			web := openScoped(t, kind, s.Web)
			db := openScoped(t, kind, s.DB)
			ctx, cancel := context.WithTimeout(context.Background(), waitTimeout)
			defer cancel()
			// The session lasts long enough for the proc source's
			// socket listings to see the connection.
			if body, err := s.Attack(ctx, DefaultRemoteCommand+"; sleep 1"); err != nil || !strings.Contains(body, "db-host="+DBHost) {
				t.Fatalf("attack: %v\n%s", err, body)
			}

			// web-1: the CGI's exec of bash as www-data, its ssh, and
			// the ssh's connect to db-1:22.
			var bash, sshPid uint32
			webEvs := waitEvents(t, "web-1 source", web, func(evs []capture.Event) []string {
				bash, sshPid = 0, 0
				connected := false
				for _, ev := range evs {
					if ev.Kind == capture.KindExec && ev.Comm == "bash" && ev.Exec.UID == uint32(www.uid) &&
						slices.ContainsFunc(ev.Exec.Argv, func(a string) bool { return strings.Contains(a, "ssh ") }) {
						bash = ev.Proc.PID
					}
				}
				for _, ev := range evs {
					if ev.Kind == capture.KindExec && ev.Comm == "ssh" && bash != 0 && ev.Parent.PID == bash {
						sshPid = ev.Proc.PID
					}
				}
				for _, ev := range evs {
					if ev.Kind == capture.KindConnect && sshPid != 0 && ev.Proc.PID == sshPid && ev.Conn != nil && ev.Conn.Dst == ssh22 {
						connected = true
					}
				}
				var missing []string
				if bash == 0 {
					missing = append(missing, "exec of bash by the CGI")
				}
				if sshPid == 0 {
					missing = append(missing, "exec of ssh by that bash")
				}
				if !connected {
					missing = append(missing, "connect of ssh to "+ssh22.String())
				}
				return missing
			})
			// db-1: sshd accepting on :22 and the shell it started.
			dbEvs := waitEvents(t, "db-1 source", db, func(evs []capture.Event) []string {
				accepted, shell := false, false
				for _, ev := range evs {
					if ev.Kind == capture.KindAccept && ev.Conn != nil && ev.Conn.Src == ssh22 && ev.Conn.Dst.Addr() == s.Web.Addr {
						accepted = true
					}
					if ev.Kind == capture.KindExec && ev.Comm == "bash" && ev.Exec.UID == 0 &&
						slices.ContainsFunc(ev.Exec.Argv, func(a string) bool { return strings.Contains(a, "db-host=") }) {
						shell = true
					}
				}
				var missing []string
				if !accepted {
					missing = append(missing, "accept on "+ssh22.String()+" from web-1")
				}
				if !shell {
					missing = append(missing, "exec of the remote command's shell")
				}
				return missing
			})

			// Nothing of the other host.
			for _, c := range []struct {
				host    *testnet.Host
				evs     []capture.Event
				foreign uint32 // the other host's daemon
			}{{s.Web, webEvs, uint32(s.SSHDPID)}, {s.DB, dbEvs, uint32(s.ApachePID)}} {
				ino := nsInode(t, c.host)
				for _, ev := range c.evs {
					if ev.Kind == capture.KindExec && ev.Exec.NetNS != 0 && ev.Exec.NetNS != ino {
						t.Errorf("%s source: exec in network namespace %d, not %s's %d: %s %q", c.host.Name, ev.Exec.NetNS, c.host.Name, ino, ev.Comm, ev.Exec.Argv)
					}
					if ev.Proc.PID == c.foreign || ev.Parent.PID == c.foreign {
						t.Errorf("%s source: event of the other host's daemon (pid %d): %s %s", c.host.Name, c.foreign, ev.Kind, ev.Proc)
					}
					if ev.Conn != nil && ev.Conn.Src.Addr() != c.host.Addr {
						t.Errorf("%s source: connection with local end %s, not on this host (%s): %s %s", c.host.Name, ev.Conn.Src, c.host.Addr, ev.Kind, ev.Conn)
					}
				}
			}
		})
	}
}
