// Package center is the Security Center: the root of the proxy tree. It
// accepts children, verifies every batch against its agent's certificate,
// stores each (agent, seq) exactly once, pushes the CRL down the tree and
// sends commands down to named agents. (SQL store, rules, ledger, API and UI
// build on this.)
package center

import (
	"context"
	"fmt"
	"golang.org/x/sync/semaphore"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2"
	"golang.org/x/sync/errgroup"

	"github.com/evilbitlabs/daemoneye/config"
	"github.com/evilbitlabs/daemoneye/ledger"
	"github.com/evilbitlabs/daemoneye/rules"
	"github.com/evilbitlabs/daemoneye/store"
	"github.com/evilbitlabs/daemoneye/store/sqlstore"
	"github.com/evilbitlabs/daemoneye/store/wal"
	"github.com/evilbitlabs/daemoneye/transport"
	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Center is a running Security Center.
type Center struct {
	cfg    config.Center
	log    *slog.Logger
	id     *transport.Identity
	db     *pebble.DB
	outbox *wal.WAL
	srv    *transport.Server
	disp   *transport.Dispatcher
	Ingest *Ingest
	// SQL is the queryable store derived from the batch store: every
	// batch durable in Pebble is ingested here (again after a crash).
	SQL     *sqlstore.Store
	Ledger  *ledger.Ledger // every operator action (and trace event) is a leaf
	API     *API           // nil when center.api.listen is empty
	apiCert *apiCert       // what the API presents (api_tls.go)
	Rules   *rules.Engine
	packsMu sync.RWMutex       // packs: replaced when the pack files change (rulepush.go)
	packs   []*rules.Pack      // the active rule packs (agent alerts are checked against them)
	push    *transport.Latest  // the rule pack set every child gets (rulepush.go)
	rec     *rules.SQLRecorder // alerts table; nil until Run starts the rules
	ingestQ chan *wire.Batch   // bulk batches for SQL, in commit order
	urgentQ chan *wire.Batch   // trace and alert batches for SQL: taken first
	onSQL   atomic.Pointer[func(*wire.Batch)]
	// sqlBudget bounds the decoded events waiting in ingestQ (sqlQueueEvents):
	// a thousand 2000-event batches held decoded were 2 GB of heap, and the
	// collector's work on it delayed everything else. What does not fit
	// waits in the batch store, marked pending, and is read back from there.
	sqlBudget *semaphore.Weighted
	stopping  chan struct{} // closed when Run's context ends
	catchUp   chan struct{} // batches are waiting in the batch store only (sql.go)

	// ops writes trace state (the same center.db as the API's operators);
	// auditor records what it writes in the ledger.
	ops     *Operators
	auditor Auditor

	sinks *SinkGate // export sinks behind the egress gate (sink.go)

	retention    retention     // the purge job's state (retention.go)
	watchChanged chan struct{} // the watch rules changed (watch.go)

	fleetMu sync.Mutex
	fleet   map[string]wire.Health // the last health report of each node
	// healthDue holds reports not yet written to the registry (the newest
	// per node), written off the children's control readers (fleet.go).
	healthDue  map[string]wire.Health
	healthKick chan struct{}
	// fleetReg coalesces the registry's updates on route changes (fleet.go).
	fleetReg fleetRegistrar

	ackMu sync.Mutex
	acks  map[string][]wire.CommandAck // command id -> acks received
	// OnCommandAck is called for every ack coming up (tests, the ledger).
	OnCommandAck func(wire.CommandAck)
}

// New opens the center's stores and listener.
func New(cfg config.Center, log *slog.Logger) (*Center, error) {
	if err := os.MkdirAll(cfg.DataDir, 0o700); err != nil {
		return nil, fmt.Errorf("center: %w", err)
	}
	crlPath := cfg.TLS.CRL
	if crlPath == "" {
		crlPath = filepath.Join(cfg.DataDir, "crl.pem")
	}
	id, err := transport.LoadIdentity(cfg.TLS.Cert, cfg.TLS.Key, cfg.TLS.CA, crlPath)
	if err != nil {
		return nil, fmt.Errorf("center: %w", err)
	}
	if id.Role != pki.RoleCenter {
		return nil, fmt.Errorf("center: certificate is for a %s, not a center", id.Role)
	}
	log = log.With("component", "center", "node", id.Name)
	db, err := pebble.Open(filepath.Join(cfg.DataDir, "batches"), &pebble.Options{Logger: store.PebbleLogger(log), EventListener: store.PebbleEvents(log)})
	if err != nil {
		return nil, fmt.Errorf("center: open batch store: %w", err)
	}
	outbox, err := wal.Open(filepath.Join(cfg.DataDir, "outbox"), wal.Options{}, log)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("center: %w", err)
	}
	sq, err := sqlstore.Open(filepath.Join(cfg.DataDir, "center.db"), log)
	if err != nil {
		outbox.Close()
		db.Close()
		return nil, fmt.Errorf("center: %w", err)
	}
	signer, vkey, err := ledger.LoadOrCreateSigner(filepath.Join(cfg.DataDir, "ledger.key"), ledger.Origin(id.Name))
	if err != nil {
		sq.Close()
		outbox.Close()
		db.Close()
		return nil, fmt.Errorf("center: ledger key: %w", err)
	}
	ledgerDir := filepath.Join(cfg.DataDir, "ledger")
	lg, err := ledger.Open(ledgerDir, signer, log, ledger.Options{})
	if err != nil {
		sq.Close()
		outbox.Close()
		db.Close()
		return nil, fmt.Errorf("center: %w", err)
	}
	ops, err := OpenOperators(sq.Path())
	if err != nil {
		lg.Close()
		sq.Close()
		outbox.Close()
		db.Close()
		return nil, fmt.Errorf("center: %w", err)
	}
	c := &Center{cfg: cfg, log: log, id: id, db: db, outbox: outbox, SQL: sq, Ledger: lg, ingestQ: make(chan *wire.Batch, 1024), urgentQ: make(chan *wire.Batch, 256),
		stopping: make(chan struct{}), watchChanged: make(chan struct{}, 1), acks: map[string][]wire.CommandAck{}, fleet: map[string]wire.Health{}, healthDue: map[string]wire.Health{}, healthKick: make(chan struct{}, 1), ops: ops, auditor: LedgerAuditor{L: lg}}
	if cfg.API.Listen != "" {
		c.apiCert, err = newAPICert(cfg, id.Name, id.Holder, id.Verifier, log)
		if err == nil {
			c.API, err = NewAPI(APIDeps{SQL: sq, Audit: LedgerAuditor{L: lg}, Verifier: id.Verifier, Cfg: cfg.API, Center: c, Log: log,
				Ledger: LedgerDeps{L: lg, Dir: ledgerDir, VerifierKey: vkey}})
		}
		if err != nil {
			lg.Close()
			sq.Close()
			outbox.Close()
			db.Close()
			return nil, fmt.Errorf("center: %w", err)
		}
	}
	c.sinks = newSinkGate(cfg.Sinks, sq, LedgerAuditor{L: lg}, log)
	c.Ingest = &Ingest{db: db, verifier: id.Verifier, log: log, limits: wire.DefaultLimits()}
	c.sqlBudget = semaphore.NewWeighted(int64(c.sqlQueueEvents()))
	c.catchUp = make(chan struct{}, 1)
	c.Ingest.toSQL = func(b *wire.Batch, urgent bool) {
		q := c.ingestQ
		if urgent {
			q = c.urgentQ
		} else if !c.sqlBudget.TryAcquire(c.sqlWeight(b)) {
			// The queue is full: SQL reads it back from the batch store
			// when it gets there, and the commit does not wait.
			c.catchUpKick()
			return
		}
		select {
		case q <- b:
		case <-c.stopping: // the next start reconciles it from the batch store
		}
	}
	c.srv, err = transport.NewServer(transport.ServerConfig{
		NodeID: id.Name,
		Listen: cfg.Listen,
		TLS:    id.ServerTLS(pki.RoleAgent, pki.RoleProxy),
		OnBatch: func(_ *transport.Child, lane wire.Lane, info wire.Info, sealed []byte) transport.Verdict {
			// Verified off the server's goroutine (bulk through a CPU gate,
			// trace first); verdicts are awaited in lane order.
			return c.Ingest.Submit(lane, info.AgentID, info.Seq, sealed)
		},
		OnControl: c.onControl,
		OnChange: func() {
			go c.disp.Flush(context.Background())
			go c.registerFleet(context.Background())
			c.push.CatchUp()
		},
		Log: log,
	})
	if err != nil {
		lg.Close()
		sq.Close()
		outbox.Close()
		db.Close()
		return nil, fmt.Errorf("center: %w", err)
	}
	c.disp = transport.NewDispatcher(c.srv, outbox, c.recordAck, log)
	c.push = transport.NewLatest(c.srv, log)
	return c, nil
}

// Addr is the address children connect to.
func (c *Center) Addr() string { return c.srv.Addr() }

// Agents lists the agents reachable now.
func (c *Center) Agents() []string { return c.srv.Agents() }

// Run serves until ctx ends.
func (c *Center) Run(ctx context.Context) error {
	serving := false
	defer func() {
		if !serving {
			// The listener New opened closes as the server's Run ends:
			// a start that stops early (while reconciling) must not keep
			// the port.
			done, cancel := context.WithCancel(context.Background())
			cancel()
			c.srv.Run(done) //nolint:errcheck // returns nil on a done context
		}
		if c.API != nil {
			c.API.Close()
		}
		c.outbox.Close()
		c.ops.Close()
		c.Ledger.Close()
		c.SQL.Close()
		c.db.Close()
	}()
	var apiLn net.Listener
	if c.API != nil {
		// Listen before anything starts, so a busy port fails the start
		// cleanly instead of leaving goroutines behind.
		var err error
		if apiLn, err = net.Listen("tcp", c.cfg.API.Listen); err != nil {
			return fmt.Errorf("center: api: %w", err)
		}
	}
	if err := c.reconcile(ctx); err != nil {
		if apiLn != nil {
			apiLn.Close()
		}
		if ctx.Err() != nil {
			return nil // stopped while reconciling; the next start goes on
		}
		return err
	}
	stop := context.AfterFunc(ctx, func() { close(c.stopping) })
	defer stop()
	eng, closeRules, err := c.startRules(ctx)
	if err != nil {
		if apiLn != nil {
			apiLn.Close()
		}
		return fmt.Errorf("center: %w", err)
	}
	defer closeRules()
	c.Rules = eng
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error { return c.ingestSQL(gctx) })
	g.Go(func() error { return eng.Run(gctx) })
	g.Go(func() error { return c.runWatches(gctx) })
	g.Go(func() error { return c.Ledger.Run(gctx) })
	if apiLn != nil {
		g.Go(func() error { return c.API.Serve(gctx, apiLn, c.apiCert.tlsConfig()) })
		g.Go(func() error { return c.apiCert.maintain(gctx, time.Minute) })
	}
	serving = true
	g.Go(func() error { return c.srv.Run(gctx) })
	g.Go(func() error { return c.disp.Run(gctx) })
	g.Go(func() error { return c.watchCRL(gctx) })
	g.Go(func() error { return c.writeHealth(gctx) })
	g.Go(func() error { return c.watchRulePacks(gctx) })
	g.Go(func() error { return c.sinks.Run(gctx) })
	g.Go(func() error { return c.runRetention(gctx) })
	return g.Wait()
}

// SendCommand queues a command for one agent; it travels down the tree and
// waits in outboxes until the agent is reachable or it expires.
func (c *Center) SendCommand(ctx context.Context, cmd wire.Command) error {
	return c.disp.Submit(ctx, cmd)
}

// Acks returns the acks received for a command.
func (c *Center) Acks(commandID string) []wire.CommandAck {
	c.ackMu.Lock()
	defer c.ackMu.Unlock()
	return append([]wire.CommandAck(nil), c.acks[commandID]...)
}

func (c *Center) recordAck(a wire.CommandAck) {
	c.ackMu.Lock()
	c.acks[a.CommandID] = append(c.acks[a.CommandID], a)
	c.ackMu.Unlock()
	c.log.Info("command ack", "command", a.CommandID, "agent", a.AgentID, "status", a.Status, "detail", a.Detail)
	c.traceAck(a)
	if c.OnCommandAck != nil {
		c.OnCommandAck(a)
	}
}

func (c *Center) onControl(ch *transport.Child, f wire.Frame) {
	switch m := f.(type) {
	case *wire.CommandAck:
		c.disp.Acked(*m)
	case *wire.RenewRequest:
		c.renew(*m)
	case *wire.Health:
		c.onHealth(ch, *m)
	}
}

// renew signs a node's renewal with the CA and routes the answer down. The
// proof in the request shows the current key asked, whatever proxies relayed it.
func (c *Center) renew(m wire.RenewRequest) {
	resp := wire.RenewResponse{NodeID: m.NodeID}
	if c.cfg.CADir == "" {
		resp.Error = "this center holds no CA (center.ca_dir): renew with `daemoneye pki issue`"
	} else if ca, err := pki.LoadCA(c.cfg.CADir); err != nil {
		resp.Error = "center CA: " + err.Error()
	} else if certPEM, err := ca.SignRenewal(pki.RenewalRequest{CSR: m.CSR, Cert: m.Cert, Proof: m.Proof}, 0); err != nil {
		resp.Error = err.Error()
	} else if cert, err := pki.ParseCertificatePEM(certPEM); err != nil {
		resp.Error = err.Error()
	} else {
		resp.Cert = cert.Raw
		c.log.Info("certificate renewed", "node", m.NodeID, "serial", pki.FormatSerial(cert.SerialNumber))
	}
	if resp.Error != "" {
		c.log.Warn("renewal refused", "node", m.NodeID, "reason", resp.Error)
	}
	child, ok := c.srv.RouteNode(m.NodeID)
	if !ok {
		c.log.Warn("renewal answer has no route", "node", m.NodeID)
		return
	}
	if err := child.Send(context.Background(), resp); err != nil {
		c.log.Warn("send renewal answer", "node", m.NodeID, "err", err)
	}
}

// PushCRL applies a CRL (from `daemoneye pki revoke`) and sends it down.
func (c *Center) PushCRL(ctx context.Context, der []byte) error {
	if _, err := c.id.ApplyCRL(der); err != nil {
		return err
	}
	c.srv.Broadcast(ctx, wire.CRL{DER: der})
	return nil
}

// watchCRL pushes the CA's CRL down the tree whenever its number grows, and
// to every child every minute (children that joined since get it too).
func (c *Center) watchCRL(ctx context.Context) error {
	if c.cfg.CADir == "" {
		return nil
	}
	t := time.NewTicker(2 * time.Second)
	defer t.Stop()
	var last time.Time
	for {
		if ca, err := pki.LoadCA(c.cfg.CADir); err == nil {
			crl := ca.CRL()
			changed, err := c.id.ApplyCRL(crl.Raw)
			if err != nil {
				c.log.Warn("CRL", "err", err)
			} else if changed || time.Since(last) > time.Minute {
				c.srv.Broadcast(ctx, wire.CRL{DER: crl.Raw})
				last = time.Now()
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
