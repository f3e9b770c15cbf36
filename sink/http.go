package sink

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
)

// clientTLS builds the client TLS configuration of a sink.
func clientTLS(t config.SinkTLS) (*tls.Config, error) {
	c := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if t.CA != "" {
		pem, err := os.ReadFile(t.CA)
		if err != nil {
			return nil, fmt.Errorf("tls ca: %w", err)
		}
		c.RootCAs = x509.NewCertPool()
		if !c.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("tls ca %s: no PEM certificate", t.CA)
		}
	}
	if t.Cert != "" || t.Key != "" {
		cert, err := tls.LoadX509KeyPair(t.Cert, t.Key)
		if err != nil {
			return nil, fmt.Errorf("tls client certificate: %w", err)
		}
		c.Certificates = []tls.Certificate{cert}
	}
	return c, nil
}

func readToken(path string) (string, error) {
	if path == "" {
		return "", nil
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("token file: %w", err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" || strings.ContainsAny(tok, "\r\n") {
		return "", fmt.Errorf("token file %s: want one line", path)
	}
	return tok, nil
}

// httpDest posts a batch to one URL; the format is the caller's.
type httpDest struct {
	url, auth, ctype string
	client           *http.Client
}

func newHTTPDest(cfg config.Sink, path, authScheme, ctype string) (*httpDest, error) {
	tc, err := clientTLS(cfg.TLS)
	if err != nil {
		return nil, err
	}
	tok, err := readToken(cfg.TokenFile)
	if err != nil {
		return nil, err
	}
	d := &httpDest{url: strings.TrimRight(cfg.URL, "/") + path, ctype: ctype,
		client: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: tc, ForceAttemptHTTP2: true,
			MaxIdleConns: 2, IdleConnTimeout: 90 * time.Second, Proxy: nil}}}
	if tok != "" {
		d.auth = authScheme + " " + tok
	}
	return d, nil
}

// post sends body and returns the response body of a 2xx answer; other
// statuses are errors, permanent unless a retry may help (408, 429, 5xx).
func (d *httpDest) post(ctx context.Context, body []byte) ([]byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrPermanent, err)
	}
	req.Header.Set("Content-Type", d.ctype)
	req.Header.Set("User-Agent", "daemoneye-sink")
	if d.auth != "" {
		req.Header.Set("Authorization", d.auth)
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	rb, err := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode/100 == 2 {
		return rb, nil
	}
	err = fmt.Errorf("%s: %s: %.200s", d.url, resp.Status, bytes.TrimSpace(rb))
	switch {
	case resp.StatusCode == http.StatusRequestTimeout, resp.StatusCode == http.StatusTooManyRequests, resp.StatusCode >= 500:
		return nil, err
	}
	return nil, fmt.Errorf("%w: %w", ErrPermanent, err)
}

func (d *httpDest) close() error {
	d.client.CloseIdleConnections()
	return nil
}

// hec is Splunk's HTTP Event Collector: JSON event objects, one after
// another in one body, to /services/collector/event with "Splunk TOKEN".
type hec struct {
	*httpDest
	index string
}

func newHEC(cfg config.Sink) (*hec, error) {
	d, err := newHTTPDest(cfg, "/services/collector/event", "Splunk", "application/json")
	if err != nil {
		return nil, err
	}
	return &hec{httpDest: d, index: cfg.Index}, nil
}

type hecEvent struct {
	Time       json.Number     `json:"time"` // epoch seconds with milliseconds
	Host       string          `json:"host,omitempty"`
	Source     string          `json:"source"`
	Sourcetype string          `json:"sourcetype"`
	Index      string          `json:"index,omitempty"`
	Event      json.RawMessage `json:"event"`
}

func (h *hec) send(ctx context.Context, recs []Record) ([]Record, error) {
	var body bytes.Buffer
	enc := json.NewEncoder(&body)
	for _, r := range recs {
		ms := r.time.UnixMilli()
		ev := hecEvent{Time: json.Number(strconv.FormatInt(ms/1000, 10) + "." + fmt.Sprintf("%03d", ms%1000)), Host: r.host,
			Source: "daemoneye", Sourcetype: "daemoneye:" + r.kind, Index: h.index, Event: r.doc}
		if err := enc.Encode(ev); err != nil {
			return recs, fmt.Errorf("%w: %w", ErrPermanent, err)
		}
	}
	rb, err := h.post(ctx, body.Bytes())
	if err != nil {
		return recs, err
	}
	var ans struct {
		Code int    `json:"code"`
		Text string `json:"text"`
	}
	if err := json.Unmarshal(rb, &ans); err != nil || ans.Code != 0 {
		return recs, fmt.Errorf("splunk hec: unexpected answer %.200q", rb)
	}
	return nil, nil
}

// elastic is Elasticsearch's (and OpenSearch's) bulk API: NDJSON of
// action and document lines. "create" with the record's id makes a resend
// a conflict (409), which counts as delivered.
type elastic struct {
	*httpDest
	prefix string
}

func newElastic(cfg config.Sink) (*elastic, error) {
	d, err := newHTTPDest(cfg, "/_bulk", "ApiKey", "application/x-ndjson")
	if err != nil {
		return nil, err
	}
	p := cfg.Index
	if p == "" {
		p = "daemoneye"
	}
	return &elastic{httpDest: d, prefix: p}, nil
}

type bulkAction struct {
	Create struct {
		Index string `json:"_index"`
		ID    string `json:"_id"`
	} `json:"create"`
}

func (e *elastic) send(ctx context.Context, recs []Record) ([]Record, error) {
	var body bytes.Buffer
	for _, r := range recs {
		var a bulkAction
		a.Create.Index, a.Create.ID = e.prefix+"-"+r.kind, r.id
		ab, _ := json.Marshal(a)
		body.Write(ab)
		body.WriteByte('\n')
		body.Write(withTimestamp(r))
		body.WriteByte('\n')
	}
	rb, err := e.post(ctx, body.Bytes())
	if err != nil {
		return recs, err
	}
	var ans struct {
		Errors bool `json:"errors"`
		Items  []map[string]struct {
			Status int             `json:"status"`
			Error  json.RawMessage `json:"error"`
		} `json:"items"`
	}
	if err := json.Unmarshal(rb, &ans); err != nil || len(ans.Items) != len(recs) {
		return recs, fmt.Errorf("elastic bulk: unexpected answer %.200q", rb)
	}
	if !ans.Errors {
		return nil, nil
	}
	var retry, refused []Record
	var first string
	for i, it := range ans.Items {
		res := it["create"]
		switch {
		case res.Status/100 == 2, res.Status == http.StatusConflict:
			continue
		case res.Status == http.StatusTooManyRequests, res.Status >= 500:
			retry = append(retry, recs[i])
		default:
			refused = append(refused, recs[i])
		}
		if first == "" {
			first = fmt.Sprintf("%d %s", res.Status, res.Error)
		}
	}
	switch {
	case len(retry) == 0 && len(refused) == 0:
		return nil, nil
	case len(retry) == 0:
		return refused, fmt.Errorf("%w: elastic bulk: %d documents refused: %.200s", ErrPermanent, len(refused), first)
	}
	// Refused documents ride along with retryable ones: the counters stay
	// simple and max attempts bounds the waste.
	retry = append(retry, refused...)
	return retry, fmt.Errorf("elastic bulk: %d of %d documents to retry: %.200s", len(retry), len(recs), first)
}

// withTimestamp puts @timestamp (Elastic's and Kibana's time field) first
// in the record's document.
func withTimestamp(r Record) []byte {
	ts, _ := json.Marshal(r.time.Format(time.RFC3339Nano))
	doc := r.doc
	if len(doc) < 2 || doc[0] != '{' {
		return doc
	}
	out := make([]byte, 0, len(doc)+len(ts)+16)
	out = append(out, `{"@timestamp":`...)
	out = append(out, ts...)
	if rest := bytes.TrimSpace(doc[1:]); len(rest) > 0 && rest[0] != '}' {
		out = append(out, ',')
	}
	return append(out, doc[1:]...)
}
