package sink

import (
	"context"
	"fmt"
	"time"

	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/evilbitlabs/daemoneye/config"
)

// kafkaDest produces each record to one topic: key the record id (so a
// compacted topic or a consumer can dedup a resend), value the masked JSON,
// headers its kind and host. franz-go retries within the delivery timeout;
// the sink's own retries come after that.
type kafkaDest struct {
	cl *kgo.Client
}

func newKafka(cfg config.Sink) (*kafkaDest, error) {
	opts := []kgo.Opt{kgo.SeedBrokers(cfg.Brokers...), kgo.DefaultProduceTopic(cfg.Topic),
		kgo.RecordDeliveryTimeout(20 * time.Second), kgo.ClientID("daemoneye-center"),
		kgo.RequiredAcks(kgo.AllISRAcks())}
	if !cfg.TLS.Plaintext {
		tc, err := clientTLS(cfg.TLS)
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	cl, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("%w: kafka: %w", ErrPermanent, err)
	}
	return &kafkaDest{cl: cl}, nil
}

func (k *kafkaDest) send(ctx context.Context, recs []Record) ([]Record, error) {
	krs := make([]*kgo.Record, len(recs))
	at := make(map[*kgo.Record]int, len(recs))
	for i, r := range recs {
		// Timestamp is left to the client (produce time): franz-go's
		// delivery timeout counts from it, and an event's own time is in
		// the document and the "time" header.
		krs[i] = &kgo.Record{Key: []byte(r.id), Value: r.doc,
			Headers: []kgo.RecordHeader{{Key: "kind", Value: []byte(r.kind)}, {Key: "host", Value: []byte(r.host)},
				{Key: "time", Value: []byte(r.time.Format(time.RFC3339Nano))}}}
		at[krs[i]] = i
	}
	res := k.cl.ProduceSync(ctx, krs...)
	var retry []Record
	var first error
	for _, pr := range res { // results come in completion order
		if pr.Err != nil {
			retry = append(retry, recs[at[pr.Record]])
			if first == nil {
				first = pr.Err
			}
		}
	}
	if first != nil {
		return retry, fmt.Errorf("kafka: %d of %d records not produced: %w", len(retry), len(recs), first)
	}
	return nil, nil
}

func (k *kafkaDest) close() error {
	k.cl.Close()
	return nil
}
