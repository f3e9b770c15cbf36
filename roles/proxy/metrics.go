package proxy

import (
	"context"
	"errors"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/evilbitlabs/daemoneye/transport"
)

var (
	descQueueDepth = prometheus.NewDesc("daemoneye_proxy_queue_batches", "Batches waiting in the WAL for the parent's ack, per lane.", []string{"lane"}, nil)
	descQueueBytes = prometheus.NewDesc("daemoneye_proxy_queue_bytes", "Bytes waiting in the WAL, per lane.", []string{"lane"}, nil)
	descQueueAge   = prometheus.NewDesc("daemoneye_proxy_queue_oldest_seconds", "Age of the oldest batch waiting, per lane.", []string{"lane"}, nil)
	descBatchesIn  = prometheus.NewDesc("daemoneye_proxy_batches_in_total", "Batches received from children and stored, per lane.", []string{"lane"}, nil)
	descEventsIn   = prometheus.NewDesc("daemoneye_proxy_events_in_total", "Events in batches received and stored, per lane.", []string{"lane"}, nil)
	descEventsOut  = prometheus.NewDesc("daemoneye_proxy_events_out_total", "Events in batches acknowledged by the parent, per lane.", []string{"lane"}, nil)
	descBytesIn    = prometheus.NewDesc("daemoneye_proxy_bytes_in_total", "Bytes of batches received and stored, per lane.", []string{"lane"}, nil)
	descSent       = prometheus.NewDesc("daemoneye_proxy_batches_out_total", "Batches sent upstream, per lane.", []string{"lane"}, nil)
	descAcked      = prometheus.NewDesc("daemoneye_proxy_batches_acked_total", "Batches acknowledged by the parent, per lane.", []string{"lane"}, nil)
	descBytesOut   = prometheus.NewDesc("daemoneye_proxy_link_bytes_out_total", "Bytes written to the parent link.", nil, nil)
	descRefused    = prometheus.NewDesc("daemoneye_proxy_refused_batches_total", "Batches refused from children, by cause (children keep and retry them).", []string{"cause"}, nil)
	descRejected   = prometheus.NewDesc("daemoneye_proxy_rejected_upstream_total", "Batches the parent refused for good (bad signature, malformed).", nil, nil)
	descRTT        = prometheus.NewDesc("daemoneye_proxy_link_rtt_seconds", "Smoothed RTT of links.", []string{"peer"}, nil)
	descChildren   = prometheus.NewDesc("daemoneye_proxy_children", "Connected children.", nil, nil)
	descAgents     = prometheus.NewDesc("daemoneye_proxy_routed_agents", "Agents reachable below this proxy.", nil, nil)
	descConnected  = prometheus.NewDesc("daemoneye_proxy_upstream_connected", "1 when a parent link is up.", nil, nil)
	descWALDisk    = prometheus.NewDesc("daemoneye_proxy_wal_disk_bytes", "Disk used by the WAL.", nil, nil)
	descOver       = prometheus.NewDesc("daemoneye_proxy_wal_over_watermark", "1 while bulk is refused above the high watermark.", nil, nil)
	descOutbox     = prometheus.NewDesc("daemoneye_proxy_outbox_commands", "Commands waiting for delivery to agents below.", nil, nil)
)

type collector struct{ p *Proxy }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descQueueDepth, descQueueBytes, descQueueAge, descBatchesIn, descEventsIn, descEventsOut, descBytesIn, descSent, descAcked,
		descBytesOut, descRefused, descRejected, descRTT, descChildren, descAgents, descConnected, descWALDisk, descOver, descOutbox} {
		ch <- d
	}
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	p := c.p
	ws := p.wal.Stats()
	us := p.up.Stats()
	for _, ln := range []transport.Lane{transport.LaneTrace, transport.LaneAlert, transport.LaneBulk} {
		l := ln.String()
		s := ws.Lanes[uint8(ln)]
		ch <- prometheus.MustNewConstMetric(descQueueDepth, prometheus.GaugeValue, float64(s.Entries), l)
		ch <- prometheus.MustNewConstMetric(descQueueBytes, prometheus.GaugeValue, float64(s.Bytes), l)
		ch <- prometheus.MustNewConstMetric(descQueueAge, prometheus.GaugeValue, s.Oldest.Seconds(), l)
		ch <- prometheus.MustNewConstMetric(descBatchesIn, prometheus.CounterValue, float64(p.batchesIn[ln].Load()), l)
		ch <- prometheus.MustNewConstMetric(descBytesIn, prometheus.CounterValue, float64(p.bytesIn[ln].Load()), l)
		ch <- prometheus.MustNewConstMetric(descEventsIn, prometheus.CounterValue, float64(p.eventsIn[ln].Load()), l)
		ch <- prometheus.MustNewConstMetric(descEventsOut, prometheus.CounterValue, float64(us.AckedEvents[ln]), l)
		ch <- prometheus.MustNewConstMetric(descSent, prometheus.CounterValue, float64(us.Sent[ln]), l)
		ch <- prometheus.MustNewConstMetric(descAcked, prometheus.CounterValue, float64(us.Acked[ln]), l)
	}
	ch <- prometheus.MustNewConstMetric(descBytesOut, prometheus.CounterValue, float64(us.Link.BytesOut))
	for cause, n := range p.refused {
		ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(n.Load()), cause)
	}
	ch <- prometheus.MustNewConstMetric(descRejected, prometheus.CounterValue, float64(us.Rejected))
	connected := 0.0
	if us.Connected {
		connected = 1
		ch <- prometheus.MustNewConstMetric(descRTT, prometheus.GaugeValue, us.Link.RTT.Seconds(), "parent:"+us.Parent)
	}
	children := p.srv.Children()
	for _, ch2 := range children {
		ch <- prometheus.MustNewConstMetric(descRTT, prometheus.GaugeValue, ch2.Stats().RTT.Seconds(), "child:"+ch2.ID)
	}
	ch <- prometheus.MustNewConstMetric(descChildren, prometheus.GaugeValue, float64(len(children)))
	ch <- prometheus.MustNewConstMetric(descAgents, prometheus.GaugeValue, float64(len(p.srv.Agents())))
	ch <- prometheus.MustNewConstMetric(descConnected, prometheus.GaugeValue, connected)
	ch <- prometheus.MustNewConstMetric(descWALDisk, prometheus.GaugeValue, float64(ws.DiskBytes))
	over := 0.0
	if ws.Over {
		over = 1
	}
	ch <- prometheus.MustNewConstMetric(descOver, prometheus.GaugeValue, over)
	ch <- prometheus.MustNewConstMetric(descOutbox, prometheus.GaugeValue, float64(p.disp.Pending()))
}

// Gatherer exposes the proxy's figures (for tests and the metrics listener).
func (p *Proxy) Gatherer() prometheus.Gatherer {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collector{p})
	return reg
}

func (p *Proxy) serveMetrics(ctx context.Context) error {
	ln, err := net.Listen("tcp", p.cfg.Metrics.Listen)
	if err != nil {
		p.log.Warn("metrics listener unavailable", "listen", p.cfg.Metrics.Listen, "err", err)
		return nil
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(p.Gatherer(), promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
