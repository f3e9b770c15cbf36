package transport

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Verdict waits for the fate of one batch: nil once it is durably stored (the
// child gets an Ack), or the Nack to send.
type Verdict func() *wire.Nack

// ServerConfig describes the parent side of links: a proxy or the center.
type ServerConfig struct {
	NodeID string
	Listen string
	TLS    *tls.Config
	// OnBatch takes one batch from a child, in lane order, and returns at
	// once with a Verdict; verdicts are awaited in order, so a slow store
	// slows the child (backpressure) without serialising on each fsync.
	OnBatch func(c *Child, lane wire.Lane, info wire.Info, sealed []byte) Verdict
	// OnControl receives control frames from children (command acks,
	// announces after they are applied, renewal requests).
	OnControl func(c *Child, f wire.Frame)
	// OnChange is called when children or routes change.
	OnChange func()
	// Pipeline bounds the verdicts outstanding per lane per child.
	Pipeline int
	Link     Options
	Log      *slog.Logger
	Limits   wire.Limits
}

// Child is a connected child node.
type Child struct {
	ID    string
	Role  wire.Role
	Addr  string
	Since time.Time

	link   *Link
	mu     sync.Mutex
	agents map[string]bool
	below  []string
}

// Send sends a frame down to the child on its control lane.
func (c *Child) Send(ctx context.Context, f wire.Frame) error {
	return sendFrame(ctx, c.link, LaneControl, f)
}

// Agents are the agents reachable through the child.
func (c *Child) Agents() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]string, 0, len(c.agents))
	for a := range c.agents {
		out = append(out, a)
	}
	sort.Strings(out)
	return out
}

// Stats are the child link's counters.
func (c *Child) Stats() Stats { return c.link.Stats() }

// Server accepts children and keeps the routing table agent -> child.
type Server struct {
	cfg ServerConfig
	ln  *Listener

	mu       sync.Mutex
	children map[string]*Child
	refused  map[string]uint64 // hellos refused, by reason
}

// Refused counts the children refused at hello, by reason: cycle,
// identity, version.
func (s *Server) Refused() map[string]uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := map[string]uint64{}
	for k, v := range s.refused {
		out[k] = v
	}
	return out
}

// NewServer listens at cfg.Listen.
func NewServer(cfg ServerConfig) (*Server, error) {
	if cfg.NodeID == "" || cfg.TLS == nil || cfg.OnBatch == nil {
		return nil, errors.New("server: node id, TLS and OnBatch are required")
	}
	if cfg.Pipeline <= 0 {
		cfg.Pipeline = 512
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	if cfg.Limits == (wire.Limits{}) {
		cfg.Limits = wire.DefaultLimits()
	}
	cfg.Log = cfg.Log.With("component", "server", "node", cfg.NodeID)
	cfg.Link.Log = cfg.Log
	ln, err := Listen(cfg.Listen, cfg.TLS, cfg.Link)
	if err != nil {
		return nil, err
	}
	return &Server{cfg: cfg, ln: ln, children: map[string]*Child{}, refused: map[string]uint64{}}, nil
}

// Addr is the bound address.
func (s *Server) Addr() string { return s.ln.Addr() }

// Run accepts children until ctx ends.
func (s *Server) Run(ctx context.Context) error {
	defer s.ln.Close()
	var wg sync.WaitGroup
	defer wg.Wait()
	for {
		l, err := s.ln.Accept(ctx)
		if err != nil {
			if ctx.Err() != nil {
				s.closeAll()
				return nil
			}
			s.cfg.Log.Warn("accept", "err", err)
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.serve(ctx, l)
		}()
	}
}

func (s *Server) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.children {
		c.link.Close()
	}
}

// Route returns the child through which agentID is reached.
func (s *Server) Route(agentID string) (*Child, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range s.children {
		c.mu.Lock()
		ok := c.agents[agentID]
		c.mu.Unlock()
		if ok {
			return c, true
		}
	}
	return nil, false
}

// Children lists the connected children.
func (s *Server) Children() []*Child {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]*Child, 0, len(s.children))
	for _, c := range s.children {
		out = append(out, c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out
}

// Agents lists every agent reachable below this node.
func (s *Server) Agents() []string {
	var out []string
	for _, c := range s.Children() {
		out = append(out, c.Agents()...)
	}
	sort.Strings(out)
	return slices.Compact(out)
}

// Below lists this node and every node below it, for our own Hello upward.
func (s *Server) Below() []string {
	out := []string{s.cfg.NodeID}
	for _, c := range s.Children() {
		c.mu.Lock()
		out = append(out, c.below...)
		c.mu.Unlock()
	}
	sort.Strings(out[1:])
	return slices.Compact(out)
}

// Broadcast sends a frame to every child (a CRL, say).
func (s *Server) Broadcast(ctx context.Context, f wire.Frame) {
	for _, c := range s.Children() {
		if err := c.Send(ctx, f); err != nil {
			s.cfg.Log.Warn("broadcast", "child", c.ID, "err", err)
		}
	}
}

func (s *Server) changed() {
	if s.cfg.OnChange != nil {
		s.cfg.OnChange()
	}
}

// serve runs one child link from Hello to its end.
func (s *Server) serve(ctx context.Context, l *Link) {
	defer l.Close()
	c, err := s.hello(ctx, l)
	if err != nil {
		s.cfg.Log.Warn("child refused", "addr", l.RemoteAddr(), "err", err)
		return
	}
	s.mu.Lock()
	if old, ok := s.children[c.ID]; ok {
		// A reconnect before the old link timed out: the new one wins.
		old.link.Close()
	}
	s.children[c.ID] = c
	s.mu.Unlock()
	s.cfg.Log.Info("child connected", "child", c.ID, "role", c.Role, "addr", c.Addr, "agents", len(c.agents))
	s.changed()
	defer func() {
		s.mu.Lock()
		if s.children[c.ID] == c {
			delete(s.children, c.ID)
		}
		s.mu.Unlock()
		s.cfg.Log.Info("child disconnected", "child", c.ID, "err", l.Err())
		s.changed()
	}()

	lctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	for _, ln := range []Lane{LaneTrace, LaneAlert, LaneBulk} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.lane(lctx, c, ln)
		}()
	}
	err = l.Receive(LaneControl, func(b []byte) error { return s.control(c, b) })
	if err != nil && ctx.Err() == nil {
		s.cfg.Log.Debug("control lane ended", "child", c.ID, "err", err)
	}
	l.Close()
	cancel()
	wg.Wait()
}

// hello reads the child's Hello and answers it. The node id and role must be
// those of the child's certificate, and we must not be below the child.
func (s *Server) hello(ctx context.Context, l *Link) (*Child, error) {
	hc := make(chan *wire.Hello, 1)
	go l.Receive(LaneControl, func(b []byte) error {
		f, err := wire.DecodeFrame(b, s.cfg.Limits)
		if err != nil {
			return err
		}
		h, ok := f.(*wire.Hello)
		if !ok {
			return fmt.Errorf("expected Hello, got %v", f.Type())
		}
		hc <- h
		return errHelloDone
	})
	var h *wire.Hello
	select {
	case h = <-hc:
	case <-l.Done():
		return nil, fmt.Errorf("before hello: %w", l.Err())
	case <-time.After(10 * time.Second):
		return nil, errors.New("no hello within 10s")
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	refuse := func(code wire.HelloCode, reason string) error {
		kind := map[wire.HelloCode]string{wire.HelloCycle: "cycle", wire.HelloBadVersion: "version", wire.HelloRefused: "identity"}[code]
		s.mu.Lock()
		s.refused[kind]++
		s.mu.Unlock()
		sendFrame(ctx, l, LaneControl, wire.HelloAck{NodeID: s.cfg.NodeID, Version: ProtocolVersion, Code: code, Reason: reason})
		fctx, cancel := context.WithTimeout(ctx, time.Second)
		l.Flush(fctx)
		cancel()
		return errors.New(reason)
	}
	role, name, err := pki.Identity(l.Peer())
	if err != nil {
		return nil, refuse(wire.HelloRefused, "certificate names no identity: "+err.Error())
	}
	if name != h.NodeID || string(role) != h.Role.String() {
		return nil, refuse(wire.HelloRefused, fmt.Sprintf("hello claims %s/%s but the certificate is %s/%s", h.Role, h.NodeID, role, name))
	}
	if h.Version != ProtocolVersion {
		return nil, refuse(wire.HelloBadVersion, fmt.Sprintf("protocol version %d, we speak %d", h.Version, ProtocolVersion))
	}
	if slices.Contains(h.Hops, s.cfg.NodeID) {
		return nil, refuse(wire.HelloCycle, fmt.Sprintf("%s is below %s already: the link would close a cycle", s.cfg.NodeID, h.NodeID))
	}
	agents := map[string]bool{}
	if h.Role == wire.RoleAgent {
		agents[h.NodeID] = true // an agent speaks only for itself
	} else {
		for _, a := range h.Agents {
			agents[a] = true
		}
	}
	if err := sendFrame(ctx, l, LaneControl, wire.HelloAck{NodeID: s.cfg.NodeID, Version: ProtocolVersion}); err != nil {
		return nil, err
	}
	return &Child{ID: h.NodeID, Role: h.Role, Addr: l.RemoteAddr(), Since: time.Now(), link: l, agents: agents, below: h.Hops}, nil
}

func (s *Server) control(c *Child, b []byte) error {
	f, err := wire.DecodeFrame(b, s.cfg.Limits)
	if err != nil {
		// A malformed control frame ends this child's link, not the server.
		return fmt.Errorf("from %s: %w", c.ID, err)
	}
	if a, ok := f.(*wire.Announce); ok && c.Role != wire.RoleAgent {
		c.mu.Lock()
		for _, x := range a.Added {
			c.agents[x] = true
		}
		for _, x := range a.Removed {
			delete(c.agents, x)
		}
		c.mu.Unlock()
		s.changed()
	}
	if s.cfg.OnControl != nil {
		s.cfg.OnControl(c, f)
	}
	return nil
}

// lane reads one lane's batches, hands them to OnBatch in order and answers
// each verdict in the same order.
func (s *Server) lane(ctx context.Context, c *Child, ln Lane) {
	type job struct {
		agentID string
		seq     uint64
		verdict Verdict
	}
	jobs := make(chan job, s.cfg.Pipeline)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for j := range jobs {
			nack := j.verdict()
			var f wire.Frame = wire.Ack{Lane: wire.Lane(ln), AgentID: j.agentID, Seq: j.seq}
			if nack != nil {
				f = *nack
			}
			if err := c.Send(ctx, f); err != nil {
				// The link is gone; the child will replay what we did not ack.
				for range jobs {
				}
				return
			}
		}
	}()
	err := c.link.Receive(ln, func(b []byte) error {
		f, err := wire.DecodeFrame(b, s.cfg.Limits)
		if err != nil {
			s.cfg.Log.Warn("malformed frame: closing the child's link", "child", c.ID, "lane", ln, "err", err)
			return err
		}
		bf, ok := f.(*wire.BatchFrame)
		if !ok || Lane(bf.Lane) != ln {
			return fmt.Errorf("lane %v: unexpected %v", ln, f.Type())
		}
		info, err := wire.PeekInfo(bf.Sealed)
		agentID, seq := info.AgentID, info.Seq
		if err != nil {
			// Without (agent, seq) there is nothing to nack by; the frame
			// itself was well-formed, so drop the batch and keep the link.
			s.cfg.Log.Warn("unreadable batch dropped", "child", c.ID, "lane", ln, "err", err)
			return nil
		}
		if c.Role == wire.RoleAgent && agentID != c.ID {
			jobs <- job{agentID, seq, func() *wire.Nack {
				return &wire.Nack{Lane: wire.Lane(ln), AgentID: agentID, Seq: seq, Code: wire.NackBadSignature,
					Reason: fmt.Sprintf("agent %s sent a batch of agent %s", c.ID, agentID)}
			}}
			return nil
		}
		select {
		case jobs <- job{agentID, seq, s.cfg.OnBatch(c, wire.Lane(ln), info, bf.Sealed)}:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	if err != nil && ctx.Err() == nil {
		// A malformed or oversized frame ends this child's link (it will
		// reconnect and replay from its WAL); other children are untouched.
		c.link.Close()
	}
	close(jobs)
	<-done
}
