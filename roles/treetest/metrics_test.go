package treetest

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/evilbitlabs/daemoneye/config"
)

// The proxy's health figures are served in Prometheus text format on a
// loopback listener (the default), with every figure the tree needs.
func TestProxyMetricsEndpoint(t *testing.T) {
	if def := config.Default().Proxy.Metrics.Listen; !strings.HasPrefix(def, "127.0.0.1:") {
		t.Errorf("default metrics listener %q is not loopback", def)
	}
	tr := New(t)
	c := tr.NewCenter("center").Start()
	px := tr.NewProxy("px", c.Cfg.Listen)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	px.Cfg.Metrics.Listen = l.Addr().String()
	l.Close()
	px.Start()
	a := tr.NewAgent("web", px.Cfg.Listen).Start()
	a.Emit(3000)
	if m := WaitAll(c, 20*time.Second, a); m != "" {
		t.Fatal(m)
	}
	var body string
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		resp, err := http.Get("http://" + px.Cfg.Metrics.Listen + "/metrics")
		if err == nil {
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			body = string(b)
			if strings.Contains(body, `daemoneye_proxy_batches_acked_total{lane="bulk"} 2`) {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics never showed the acked batches: %v\n%s", err, body)
		}
	}
	for _, want := range []string{
		`daemoneye_proxy_queue_batches{lane="trace"}`, `daemoneye_proxy_queue_oldest_seconds{lane="bulk"}`,
		`daemoneye_proxy_queue_bytes{lane="alert"}`, `daemoneye_proxy_batches_in_total{lane="bulk"} 2`,
		`daemoneye_proxy_bytes_in_total{lane="bulk"}`, `daemoneye_proxy_events_in_total{lane="bulk"} 3000`,
		`daemoneye_proxy_events_out_total{lane="bulk"} 3000`, `daemoneye_proxy_batches_out_total{lane="bulk"} 2`,
		`daemoneye_proxy_link_bytes_out_total`, `daemoneye_proxy_refused_batches_total{cause="over_watermark"} 0`,
		`daemoneye_proxy_refused_batches_total{cause="disk_full"} 0`, `daemoneye_proxy_link_rtt_seconds{peer="child:web"}`,
		`daemoneye_proxy_link_rtt_seconds{peer="parent:`, "daemoneye_proxy_children 1", "daemoneye_proxy_routed_agents 1",
		"daemoneye_proxy_upstream_connected 1", "daemoneye_proxy_wal_disk_bytes", "daemoneye_proxy_outbox_commands 0",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}

// The center serves its operator API over TLS with its own certificate and
// keeps a signed ledger in its data directory.
func TestCenterServesAPIAndLedger(t *testing.T) {
	tr := New(t)
	c := tr.NewCenter("center")
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c.Cfg.API.Listen = l.Addr().String()
	l.Close()
	c.Start()
	pool := x509.NewCertPool()
	pool.AddCert(tr.CA.Certificate())
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, ServerName: "localhost"}}}
	var resp *http.Response
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		resp, err = client.Get("https://" + c.Cfg.API.Listen + "/api/v1/hosts")
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("API over TLS: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Errorf("GET /api/v1/hosts without credentials = %d, want 401", resp.StatusCode)
	}
	for _, f := range []string{"ledger.key", "ledger.key.vkey", "ledger"} {
		if _, err := os.Stat(filepath.Join(c.Cfg.DataDir, f)); err != nil {
			t.Errorf("center data dir lacks %s: %v", f, err)
		}
	}
}
