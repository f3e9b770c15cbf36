package sink

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"

	"github.com/evilbitlabs/daemoneye/config"
)

// TestKafka produces to franz-go's in-process cluster (kfake, a real Kafka
// protocol peer on loopback) and reads the topic back with a franz-go
// consumer and, where Debian's kcat is installed, with kcat.
func TestKafka(t *testing.T) {
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(1, "daemoneye"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	brokers := c.ListenAddrs()
	s := runSink(t, config.Sink{Name: "kafka", Type: "kafka", Brokers: brokers, Topic: "daemoneye",
		TLS: config.SinkTLS{Plaintext: true}})
	recs := secretRecords()
	for _, r := range recs {
		s.Offer(r)
	}
	waitFor(t, "3 records produced", func() bool { return s.Stats().Sent == 3 })

	cl, err := kgo.NewClient(kgo.SeedBrokers(brokers...), kgo.ConsumeTopics("daemoneye"),
		kgo.ConsumeResetOffset(kgo.NewOffset().AtStart()))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []*kgo.Record
	for len(got) < 3 {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			t.Fatalf("read back %d of 3 records: %v", len(got), err)
		}
		got = append(got, fs.Records()...)
	}
	for i, r := range got {
		checkNoSecret(t, "kafka value", r.Value)
		if string(r.Key) != recs[i].ID() || !bytes.Equal(r.Value, recs[i].JSON()) {
			t.Errorf("record %d = %s %s; want %s %s", i, r.Key, r.Value, recs[i].ID(), recs[i].JSON())
		}
		if len(r.Headers) != 3 || r.Headers[0].Key != "kind" || string(r.Headers[0].Value) != recs[i].Kind() ||
			string(r.Headers[2].Value) != recs[i].Time().Format(time.RFC3339Nano) {
			t.Errorf("record %d headers = %v", i, r.Headers)
		}
	}

	kcat, err := exec.LookPath("kcat")
	if err != nil {
		t.Log("kcat not installed (apt-get install kcat): read back with franz-go only")
		return
	}
	out, err := exec.CommandContext(ctx, kcat, "-b", strings.Join(brokers, ","), "-C", "-t", "daemoneye",
		"-o", "beginning", "-e", "-q", "-J").CombinedOutput()
	if err != nil {
		t.Fatalf("kcat: %v\n%s", err, out)
	}
	var keys []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		var m struct {
			Key     string `json:"key"`
			Payload string `json:"payload"`
		}
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			t.Fatalf("kcat -J line %q: %v", sc.Text(), err)
		}
		var doc map[string]any
		if err := json.Unmarshal([]byte(m.Payload), &doc); err != nil {
			t.Errorf("kcat payload %q is not JSON: %v", m.Payload, err)
		}
		checkNoSecret(t, "kcat payload", []byte(m.Payload))
		keys = append(keys, m.Key)
	}
	sort.Strings(keys)
	if want := "alert-7 ev-tr-1-web-1-3-4 trace-tr-1-active"; strings.Join(keys, " ") != want {
		t.Errorf("kcat read keys %v, want %s", keys, want)
	}
}
