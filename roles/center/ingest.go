package center

import (
	"crypto/ed25519"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/cockroachdb/pebble/v2"

	"github.com/evilbitlabs/daemoneye/transport/pki"
	"github.com/evilbitlabs/daemoneye/transport/wire"
)

// Ingest verifies, deduplicates and durably stores batches. A batch is
// stored under (agent_id, seq) exactly once: a replay (the same batch sent
// again after a reconnect, a failover or a proxy restart) is answered as
// delivered and not stored twice.
type Ingest struct {
	db       *pebble.DB
	verifier *pki.Verifier
	log      *slog.Logger
	limits   wire.Limits
	hookMu   sync.Mutex
	onStored func(b *wire.Batch, lane wire.Lane)
	toSQL    func(b *wire.Batch, urgent bool) // hands a durable batch to the SQL ingester

	gateOnce sync.Once
	gate     *cpuGate // bounds bulk verifications running at once (Submit)
	urgentMu sync.Mutex
	urgentQ  []*wire.Batch // trace and alert batches waiting for the SQL ingester

	locks    sync.Map // agent id -> *sync.Mutex: one batch of an agent at a time
	stored   atomic.Uint64
	events   atomic.Uint64
	replays  atomic.Uint64
	rejected sync.Map // cause -> *atomic.Uint64
}

// Causes of rejection, as counted.
const (
	RejectBadSignature = "bad_signature"
	RejectCertificate  = "certificate"
	RejectMalformed    = "malformed"
)

func batchKey(agentID string, seq uint64) []byte {
	k := make([]byte, 0, 2+len(agentID)+8)
	k = append(k, 'b')
	k = append(k, agentID...)
	k = append(k, 0)
	return binary.BigEndian.AppendUint64(k, seq)
}

// pendingKey marks a stored batch the SQL store has not taken yet.
func pendingKey(batchKey []byte) []byte { return append([]byte{'q'}, batchKey...) }

func (in *Ingest) count(cause string) {
	v, _ := in.rejected.LoadOrStore(cause, new(atomic.Uint64))
	v.(*atomic.Uint64).Add(1)
}

// Rejected returns the rejected batches by cause.
func (in *Ingest) Rejected() map[string]uint64 {
	out := map[string]uint64{}
	in.rejected.Range(func(k, v any) bool {
		out[k.(string)] = v.(*atomic.Uint64).Load()
		return true
	})
	return out
}

// Counts returns batches stored, events stored and replays dropped.
func (in *Ingest) Counts() (batches, events, replays uint64) {
	return in.stored.Load(), in.events.Load(), in.replays.Load()
}

// Take handles one batch at once: Verify then Commit.
func (in *Ingest) Take(lane wire.Lane, agentID string, seq uint64, sealed []byte) *wire.Nack {
	b, nack := in.Verify(lane, agentID, seq, sealed)
	if nack != nil {
		return nack
	}
	return in.Commit(lane, b, sealed)
}

// Verify checks a batch's certificate and signature and decodes it. It is
// the expensive part and runs concurrently; Commit then stores in order.
func (in *Ingest) Verify(lane wire.Lane, agentID string, seq uint64, sealed []byte) (*wire.Batch, *wire.Nack) {
	nack := func(code wire.NackCode, cause string, err error) *wire.Nack {
		in.count(cause)
		in.log.Warn("batch refused", "agent", agentID, "seq", seq, "lane", lane, "cause", cause, "err", err)
		return &wire.Nack{Lane: lane, AgentID: agentID, Seq: seq, Code: code, Reason: err.Error()}
	}
	pub, err := in.agentKey(agentID, sealed)
	if err != nil {
		if errors.Is(err, wire.ErrMalformed) {
			return nil, nack(wire.NackMalformed, RejectMalformed, err)
		}
		return nil, nack(wire.NackBadSignature, RejectCertificate, err)
	}
	b, err := wire.OpenBatch(sealed, pub, in.limits)
	if err != nil {
		if errors.Is(err, wire.ErrBadSignature) {
			return nil, nack(wire.NackBadSignature, RejectBadSignature, err)
		}
		return nil, nack(wire.NackMalformed, RejectMalformed, err)
	}
	return b, nil
}

// Commit stores a verified batch unless (agent, seq) is already stored, in
// which case it answers "replay" and stores nothing.
func (in *Ingest) Commit(lane wire.Lane, b *wire.Batch, sealed []byte) *wire.Nack {
	if nack := in.store(lane, b, sealed); nack != nil {
		return nack
	}
	in.stored.Add(1)
	in.events.Add(uint64(len(b.Events)))
	in.hookMu.Lock()
	fn := in.onStored
	in.hookMu.Unlock()
	if fn != nil {
		fn(b, lane)
	}
	if in.toSQL != nil {
		if lane == wire.LaneBulk {
			// Blocks while the SQL ingester is behind: backpressure.
			in.toSQL(b, false)
		} else {
			in.urgentToSQL(b)
		}
	}
	return nil
}

// store writes the batch durably under the agent's lock, so that the same
// (agent, seq) arriving twice at once (a replay through another path) is
// stored and handed on once. The hand-off to SQL happens outside the lock:
// a trace batch of an agent must not wait while a bulk batch of the same
// agent waits for room in the SQL queue.
func (in *Ingest) store(lane wire.Lane, b *wire.Batch, sealed []byte) *wire.Nack {
	mu, _ := in.locks.LoadOrStore(b.AgentID, new(sync.Mutex))
	mu.(*sync.Mutex).Lock()
	defer mu.(*sync.Mutex).Unlock()
	key := batchKey(b.AgentID, b.Seq)
	if _, closer, err := in.db.Get(key); err == nil {
		closer.Close()
		in.replays.Add(1)
		return &wire.Nack{Lane: lane, AgentID: b.AgentID, Seq: b.Seq, Code: wire.NackReplay, Reason: "already stored"}
	} else if !errors.Is(err, pebble.ErrNotFound) {
		return &wire.Nack{Lane: lane, AgentID: b.AgentID, Seq: b.Seq, Code: wire.NackOverWatermark, Reason: "store: " + err.Error()}
	}
	// With it, a mark that SQL has still to take it (sql.go): the SQL queue
	// in memory is bounded, and what does not fit is read back from here.
	wb := in.db.NewBatch()
	defer wb.Close()
	wb.Set(key, sealed, nil)          //nolint:errcheck // errors surface at Commit
	wb.Set(pendingKey(key), nil, nil) //nolint:errcheck
	if err := wb.Commit(pebble.Sync); err != nil {
		return &wire.Nack{Lane: lane, AgentID: b.AgentID, Seq: b.Seq, Code: wire.NackOverWatermark, Reason: "store: " + err.Error()}
	}
	return nil
}

// urgentToSQL hands a trace or alert batch to the SQL ingester without
// making its lane wait: when the SQL queue is full of bulk, the batch waits
// in urgentQ, forwarded in order by one goroutine that lives while urgentQ
// is not empty (toSQL gives up when the center stops; the next start
// reconciles from the batch store).
func (in *Ingest) urgentToSQL(b *wire.Batch) {
	in.urgentMu.Lock()
	in.urgentQ = append(in.urgentQ, b)
	start := len(in.urgentQ) == 1
	in.urgentMu.Unlock()
	if !start {
		return // the forwarder running now takes it
	}
	go func() {
		for {
			in.urgentMu.Lock()
			next := in.urgentQ[0]
			in.urgentMu.Unlock()
			in.toSQL(next, true)
			in.urgentMu.Lock()
			in.urgentQ[0] = nil
			in.urgentQ = in.urgentQ[1:]
			empty := len(in.urgentQ) == 0
			in.urgentMu.Unlock()
			if empty {
				return
			}
		}
	}()
}

// SetOnStored sets what is called after each batch is durable (the SQL store,
// rules and ledger hang here).
func (in *Ingest) SetOnStored(fn func(b *wire.Batch, lane wire.Lane)) {
	in.hookMu.Lock()
	in.onStored = fn
	in.hookMu.Unlock()
}

// agentKey finds the public key that must have signed the batch: the
// agent's certificate travels in the batch, and it must be from our CA,
// valid, unrevoked, an agent, and name the agent the batch claims to be from.
func (in *Ingest) agentKey(agentID string, sealed []byte) (ed25519.PublicKey, error) {
	der, err := wire.PeekCert(sealed)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: batch certificate: %v", wire.ErrMalformed, err)
	}
	if err := in.verifier.VerifyCertificate(cert, pki.RoleAgent); err != nil {
		return nil, err
	}
	_, name, err := pki.Identity(cert)
	if err != nil {
		return nil, err
	}
	if name != agentID {
		return nil, fmt.Errorf("batch claims agent %s but carries the certificate of %s", agentID, name)
	}
	pub, ok := cert.PublicKey.(ed25519.PublicKey)
	if !ok {
		return nil, errors.New("agent certificate key is not Ed25519")
	}
	return pub, nil
}

// Stored lists every (agent, seq) stored, for tests and audits.
func (in *Ingest) Stored() (map[string][]uint64, error) {
	it, err := in.db.NewIter(&pebble.IterOptions{LowerBound: []byte{'b'}, UpperBound: []byte{'c'}})
	if err != nil {
		return nil, err
	}
	defer it.Close()
	out := map[string][]uint64{}
	for it.First(); it.Valid(); it.Next() {
		k := it.Key()[1:]
		if len(k) < 9 || k[len(k)-9] != 0 {
			return nil, fmt.Errorf("malformed batch key %q", it.Key())
		}
		agent := string(k[:len(k)-9])
		out[agent] = append(out[agent], binary.BigEndian.Uint64(k[len(k)-8:]))
	}
	return out, it.Error()
}

// Batch returns a stored sealed batch.
func (in *Ingest) Batch(agentID string, seq uint64) ([]byte, bool, error) {
	v, closer, err := in.db.Get(batchKey(agentID, seq))
	if errors.Is(err, pebble.ErrNotFound) {
		return nil, false, nil
	}
	if err != nil {
		return nil, false, err
	}
	defer closer.Close()
	return append([]byte(nil), v...), true, nil
}
