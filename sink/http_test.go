package sink

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
)

// receiver is an HTTPS server that keeps every request body after its
// check passed; check returns "" or what is wrong with the request.
type receiver struct {
	srv    *httptest.Server
	ca     string
	mu     sync.Mutex
	bodies [][]byte
	errs   []string
	reply  func(n int, body []byte) (int, string) // n counts requests from 1
}

func newReceiver(t *testing.T, check func(*http.Request, []byte) string, reply func(int, []byte) (int, string)) *receiver {
	rc := &receiver{reply: reply}
	rc.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		if msg := check(r, body); msg != "" {
			rc.errs = append(rc.errs, msg)
			rc.mu.Unlock()
			http.Error(w, msg, http.StatusBadRequest)
			return
		}
		rc.bodies = append(rc.bodies, body)
		n := len(rc.bodies)
		rc.mu.Unlock()
		status, out := rc.reply(n, body)
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(status)
		io.WriteString(w, out)
	}))
	t.Cleanup(rc.srv.Close)
	rc.ca = writeFile(t, "ca.pem", string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: rc.srv.Certificate().Raw})))
	return rc
}

func (rc *receiver) got() ([][]byte, []string) {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([][]byte(nil), rc.bodies...), append([]string(nil), rc.errs...)
}

func runSink(t *testing.T, cfg config.Sink) *Sink {
	t.Helper()
	s, err := New(cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.backoff = func(int) time.Duration { return time.Millisecond }
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("sink Run: %v", err)
		}
	})
	return s
}

func TestSplunkHEC(t *testing.T) {
	const token = "3f1e2d4c-0000-4000-8000-00000000abcd"
	check := func(r *http.Request, body []byte) string {
		switch {
		case r.Method != http.MethodPost:
			return "method " + r.Method
		case r.URL.Path != "/services/collector/event":
			return "path " + r.URL.Path
		case r.Header.Get("Authorization") != "Splunk "+token:
			return "authorization " + r.Header.Get("Authorization")
		case r.Header.Get("Content-Type") != "application/json":
			return "content type " + r.Header.Get("Content-Type")
		}
		// A body is JSON event objects one after another (HEC batching).
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		for dec.More() {
			var ev map[string]any
			if err := dec.Decode(&ev); err != nil {
				return "body: " + err.Error()
			}
			for _, k := range []string{"time", "host", "source", "sourcetype", "index", "event"} {
				if _, ok := ev[k]; !ok {
					return "event without " + k
				}
			}
			if _, ok := ev["time"].(json.Number); !ok {
				return "time is not a number"
			}
			if ev["index"] != "secops" || ev["source"] != "daemoneye" || !strings.HasPrefix(ev["sourcetype"].(string), "daemoneye:") {
				return "index, source or sourcetype wrong"
			}
			if _, ok := ev["event"].(map[string]any); !ok {
				return "event is not an object"
			}
		}
		return ""
	}
	// The first request meets a busy indexer (503): the batch is retried.
	rc := newReceiver(t, check, func(n int, _ []byte) (int, string) {
		if n == 1 {
			return http.StatusServiceUnavailable, `{"text":"Server is busy","code":9}`
		}
		return http.StatusOK, `{"text":"Success","code":0}`
	})
	s := runSink(t, config.Sink{Name: "splunk", Type: "splunk_hec", URL: rc.srv.URL, Index: "secops",
		TokenFile: writeFile(t, "hec.token", token+"\n"), TLS: config.SinkTLS{CA: rc.ca}})
	recs := secretRecords()
	for _, r := range recs {
		if !s.Offer(r) {
			t.Fatalf("Offer refused %s", r.Kind())
		}
	}
	waitFor(t, "3 records sent", func() bool { return s.Stats().Sent == 3 })
	bodies, errs := rc.got()
	if len(errs) > 0 {
		t.Fatalf("receiver refused requests: %v", errs)
	}
	if st := s.Stats(); st.Retries < 1 || st.Failed != 0 || st.Dropped != 0 {
		t.Errorf("stats = %+v; want a retry after the 503, nothing failed or dropped", st)
	}
	last := bodies[len(bodies)-1]
	checkNoSecret(t, "HEC body", last)
	dec := json.NewDecoder(bytes.NewReader(last))
	var kinds []string
	for dec.More() {
		var ev struct {
			Host       string         `json:"host"`
			Sourcetype string         `json:"sourcetype"`
			Event      map[string]any `json:"event"`
		}
		if err := dec.Decode(&ev); err != nil {
			t.Fatal(err)
		}
		kinds = append(kinds, ev.Sourcetype)
		if ev.Host != "web-1" {
			t.Errorf("host = %q, want web-1", ev.Host)
		}
		if ev.Sourcetype == "daemoneye:trace_event" && ev.Event["cmdline"] != "curl [2 args masked]" {
			t.Errorf("trace event cmdline = %v, want the masked form", ev.Event["cmdline"])
		}
	}
	if strings.Join(kinds, ",") != "daemoneye:alert,daemoneye:trace,daemoneye:trace_event" {
		t.Errorf("sourcetypes = %v", kinds)
	}
}

func TestSplunkHECBadTokenIsPermanent(t *testing.T) {
	rc := newReceiver(t, func(*http.Request, []byte) string { return "" }, func(int, []byte) (int, string) {
		return http.StatusForbidden, `{"text":"Invalid token","code":4}`
	})
	s := runSink(t, config.Sink{Name: "splunk", Type: "splunk_hec", URL: rc.srv.URL, TokenFile: writeFile(t, "t", "bad"),
		TLS: config.SinkTLS{CA: rc.ca}, MaxAttempts: 5})
	s.Offer(secretRecords()[0])
	waitFor(t, "the record to fail", func() bool { return s.Stats().Failed == 1 })
	if st := s.Stats(); st.Retries != 0 || !strings.Contains(st.LastError, "403") {
		t.Errorf("stats = %+v; want no retry of a 403 and the error kept", st)
	}
}

func TestElasticBulk(t *testing.T) {
	const apiKey = "VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw=="
	check := func(r *http.Request, body []byte) string {
		switch {
		case r.Method != http.MethodPost || r.URL.Path != "/_bulk":
			return "want POST /_bulk, got " + r.Method + " " + r.URL.Path
		case r.Header.Get("Authorization") != "ApiKey "+apiKey:
			return "authorization " + r.Header.Get("Authorization")
		case r.Header.Get("Content-Type") != "application/x-ndjson":
			return "content type " + r.Header.Get("Content-Type")
		case len(body) == 0 || body[len(body)-1] != '\n':
			return "NDJSON body must end with a newline"
		}
		lines := strings.Split(strings.TrimSuffix(string(body), "\n"), "\n")
		if len(lines)%2 != 0 {
			return "odd number of lines"
		}
		for i := 0; i < len(lines); i += 2 {
			var act map[string]map[string]any
			if err := json.Unmarshal([]byte(lines[i]), &act); err != nil || len(act) != 1 {
				return "action line " + lines[i]
			}
			c, ok := act["create"]
			if !ok || len(c) != 2 || !strings.HasPrefix(c["_index"].(string), "siem-") || c["_id"] == "" {
				return "action is not create with _index and _id: " + lines[i]
			}
			var doc map[string]any
			if err := json.Unmarshal([]byte(lines[i+1]), &doc); err != nil {
				return "document line " + lines[i+1]
			}
			ts, _ := doc["@timestamp"].(string)
			if _, err := time.Parse(time.RFC3339Nano, ts); err != nil {
				return "@timestamp " + ts
			}
			if doc["type"] != strings.TrimPrefix(c["_index"].(string), "siem-") {
				return "document type does not match its index"
			}
		}
		return ""
	}
	// First answer: the trace summary hits a full shard (429, retried);
	// the alert is a conflict (409: a resend, counted as delivered).
	rc := newReceiver(t, check, func(n int, body []byte) (int, string) {
		lines := strings.Count(string(body), "\n") / 2
		items := make([]string, lines)
		for i := range items {
			items[i] = `{"create":{"_index":"x","_id":"y","status":201}}`
		}
		errs := "false"
		if n == 1 {
			items[0] = `{"create":{"status":409,"error":{"type":"version_conflict_engine_exception"}}}`
			items[1] = `{"create":{"status":429,"error":{"type":"es_rejected_execution_exception"}}}`
			errs = "true"
		}
		return http.StatusOK, `{"took":3,"errors":` + errs + `,"items":[` + strings.Join(items, ",") + `]}`
	})
	s := runSink(t, config.Sink{Name: "elastic", Type: "elastic", URL: rc.srv.URL + "/", Index: "siem",
		TokenFile: writeFile(t, "key", apiKey), TLS: config.SinkTLS{CA: rc.ca}})
	for _, r := range secretRecords() {
		s.Offer(r)
	}
	waitFor(t, "3 documents delivered", func() bool { return s.Stats().Sent == 3 })
	bodies, errs := rc.got()
	if len(errs) > 0 {
		t.Fatalf("receiver refused requests: %v", errs)
	}
	if len(bodies) != 2 {
		t.Fatalf("%d bulk requests, want 2 (the batch, then the one 429 document)", len(bodies))
	}
	for _, b := range bodies {
		checkNoSecret(t, "bulk body", b)
	}
	if n := strings.Count(string(bodies[1]), "\n"); n != 2 || !strings.Contains(string(bodies[1]), `"_index":"siem-trace"`) {
		t.Errorf("retry body = %s; want only the trace summary", bodies[1])
	}
	sc := bufio.NewScanner(bytes.NewReader(bodies[0]))
	sc.Scan()
	if want := `{"create":{"_index":"siem-alert","_id":"alert-7"}}`; sc.Text() != want {
		t.Errorf("first action = %s, want %s", sc.Text(), want)
	}
}
