// Package sink sends what the center records (alerts, trace summaries and
// trace events) one way to a customer's SIEM: Kafka, Splunk HEC, Elastic's
// bulk API or syslog (RFC 5424 over TLS). It sits after the center's SQL
// store: the center offers records and never waits; each sink has a bounded
// queue, batches, retries with backoff and counts what it sent, dropped and
// gave up on. Records are masked when they are made (record.go), so no
// command-line argument or environment can reach a sink.
//
// A Sink opens its connection only when Run starts; the center runs one
// only after its enabling was approved (roles/center/sink_gate.go).
package sink

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
)

// Defaults for a sink's queue, batch and retries.
const (
	DefaultQueueRecords = 10000
	DefaultBatchRecords = 500
	DefaultMaxAttempts  = 8
)

// ErrPermanent marks a refusal that a retry cannot change (bad token, bad
// request): the batch is counted as failed at once.
var ErrPermanent = errors.New("permanent")

// destination is one kind of receiver. send delivers recs or returns the
// ones still to try (all of them unless it knows better) and why.
type destination interface {
	send(ctx context.Context, recs []Record) (retry []Record, err error)
	close() error
}

// Stats are a sink's counters since it started.
type Stats struct {
	Name      string `json:"name"`
	Type      string `json:"type"`
	Queued    int    `json:"queued"`  // in the queue now
	Offered   uint64 `json:"offered"` // records offered
	Sent      uint64 `json:"sent"`    // records the receiver accepted
	Dropped   uint64 `json:"dropped"` // records refused because the queue was full
	Failed    uint64 `json:"failed"`  // records given up on after max attempts or a permanent refusal
	Retries   uint64 `json:"retries"` // failed attempts that were retried
	LastError string `json:"last_error,omitempty"`
}

// Sink is one running export destination.
type Sink struct {
	cfg     config.Sink
	log     *slog.Logger
	q       chan Record
	kinds   map[string]bool
	batch   int
	maxTry  int
	backoff func(attempt int) time.Duration
	newDest func() (destination, error)

	offered, sent, dropped, failed, retries atomic.Uint64
	errMu                                   sync.Mutex
	lastErr                                 string
}

// New checks cfg and prepares a sink; nothing is dialled until Run.
func New(cfg config.Sink, log *slog.Logger) (*Sink, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	s := &Sink{cfg: cfg, log: log.With("component", "sink", "sink", cfg.Name, "type", cfg.Type),
		batch: cfg.BatchRecords, maxTry: cfg.MaxAttempts, backoff: Backoff(200*time.Millisecond, 30*time.Second)}
	if s.batch <= 0 {
		s.batch = DefaultBatchRecords
	}
	if s.maxTry <= 0 {
		s.maxTry = DefaultMaxAttempts
	}
	qn := cfg.QueueRecords
	if qn <= 0 {
		qn = DefaultQueueRecords
	}
	s.q = make(chan Record, qn)
	if len(cfg.Records) > 0 {
		s.kinds = map[string]bool{}
		for _, k := range cfg.Records {
			s.kinds[k] = true
		}
	}
	switch cfg.Type {
	case "kafka":
		s.newDest = func() (destination, error) { return newKafka(cfg) }
	case "splunk_hec":
		s.newDest = func() (destination, error) { return newHEC(cfg) }
	case "elastic":
		s.newDest = func() (destination, error) { return newElastic(cfg) }
	case "syslog":
		s.newDest = func() (destination, error) { return newSyslog(cfg) }
	default:
		return nil, fmt.Errorf("sink %s: unknown type %q", cfg.Name, cfg.Type)
	}
	return s, nil
}

// Name is the sink's configured name.
func (s *Sink) Name() string { return s.cfg.Name }

// Wants reports whether the sink exports records of kind.
func (s *Sink) Wants(kind string) bool { return s.kinds == nil || s.kinds[kind] }

// Offer queues r without waiting: false (and counted as dropped) when the
// queue is full or the sink does not export r's kind.
func (s *Sink) Offer(r Record) bool {
	if !s.Wants(r.kind) {
		return false
	}
	s.offered.Add(1)
	select {
	case s.q <- r:
		return true
	default:
		s.dropped.Add(1)
		return false
	}
}

// Stats returns the counters.
func (s *Sink) Stats() Stats {
	s.errMu.Lock()
	last := s.lastErr
	s.errMu.Unlock()
	return Stats{Name: s.cfg.Name, Type: s.cfg.Type, Queued: len(s.q), Offered: s.offered.Load(), Sent: s.sent.Load(),
		Dropped: s.dropped.Load(), Failed: s.failed.Load(), Retries: s.retries.Load(), LastError: last}
}

// Run delivers queued records until ctx ends; what is still queued then is
// lost (the queue is memory only).
func (s *Sink) Run(ctx context.Context) error {
	dest, err := s.newDest()
	if err != nil {
		s.setErr(err)
		return fmt.Errorf("sink %s: %w", s.cfg.Name, err)
	}
	defer dest.close()
	s.log.Info("sink running")
	buf := make([]Record, 0, s.batch)
	for {
		buf = buf[:0]
		select {
		case <-ctx.Done():
			return nil
		case r := <-s.q:
			buf = append(buf, r)
		}
	fill:
		for len(buf) < s.batch {
			select {
			case r := <-s.q:
				buf = append(buf, r)
			default:
				break fill
			}
		}
		s.deliver(ctx, dest, buf)
	}
}

func (s *Sink) deliver(ctx context.Context, dest destination, recs []Record) {
	for attempt := 1; ; attempt++ {
		retry, err := dest.send(ctx, recs)
		s.sent.Add(uint64(len(recs) - len(retry)))
		if err == nil {
			return
		}
		s.setErr(err)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, ErrPermanent) || attempt >= s.maxTry {
			s.failed.Add(uint64(len(retry)))
			s.log.Warn("records given up", "records", len(retry), "attempts", attempt, "err", err)
			return
		}
		s.retries.Add(1)
		s.log.Debug("send failed; retrying", "attempt", attempt, "err", err)
		recs = retry
		t := time.NewTimer(s.backoff(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

func (s *Sink) setErr(err error) {
	s.errMu.Lock()
	s.lastErr = err.Error()
	s.errMu.Unlock()
}

// Backoff is exponential backoff with full jitter: attempt n waits a random
// time up to base*2^(n-1), at most max.
func Backoff(base, max time.Duration) func(int) time.Duration {
	return func(attempt int) time.Duration {
		d := base << min(attempt-1, 20)
		if d <= 0 || d > max {
			d = max
		}
		return d/2 + rand.N(d/2+1)
	}
}

// Digest names a sink's configuration: an approval to enable a sink names
// this digest, so a changed destination needs a new approval. The token
// file's path is part of it, its contents are not.
func Digest(cfg config.Sink) string {
	b, _ := json.Marshal(cfg)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}
