package server

import (
	"net/http"
	"os"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/signerd/signerd/signerd/ledger"
)

// metrics are the daemon's Prometheus series, served at /metrics on the admin socket.
type metrics struct {
	reg        *prometheus.Registry
	decisions  *prometheus.CounterVec   // signing outcomes by decision and code
	requests   *prometheus.CounterVec   // HTTP requests by socket, route and status class
	latency    *prometheus.HistogramVec // signing latency by route
	killSwitch prometheus.GaugeFunc
	inflight   prometheus.Gauge
}

// ledgerCounters are the ledger's write counters as Prometheus counters read at scrape time:
// synced WAL appends (fdatasyncs), groups and operations applied, failed head mark writes.
func ledgerCounters(stats func() ledger.Stats) []prometheus.Collector {
	counter := func(name, help string, v func(ledger.Stats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help},
			func() float64 { return float64(v(stats())) })
	}
	return []prometheus.Collector{
		counter("signerd_ledger_syncs_total", "Synced write-ahead-log appends (fdatasyncs) of the ledger; each is shared by every group applied before it.",
			func(s ledger.Stats) uint64 { return s.Syncs }),
		counter("signerd_ledger_groups_total", "Groups of ledger writes applied (one transaction each).",
			func(s ledger.Stats) uint64 { return s.Groups }),
		counter("signerd_ledger_ops_total", "Ledger write operations applied.",
			func(s ledger.Stats) uint64 { return s.Ops }),
		counter("signerd_ledger_head_mark_errors_total", "Writes of the ledger's head mark (PATH.head) that failed; the mark then cannot detect lost records.",
			func(s ledger.Stats) uint64 { return s.MarkErrors }),
	}
}

func newMetrics(engaged func() float64, stats func() ledger.Stats) *metrics {
	m := &metrics{
		reg: prometheus.NewRegistry(),
		decisions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "signerd_decisions_total", Help: "Signing requests by final decision (allow, deny, needs_approval, invalid, conflict, fault) and code.",
		}, []string{"decision", "code"}),
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "signerd_http_requests_total", Help: "HTTP requests by socket, route and status code.",
		}, []string{"socket", "route", "status"}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "signerd_sign_duration_seconds", Help: "Time to answer a signing request.",
			Buckets: []float64{.0002, .0005, .001, .002, .005, .01, .025, .05, .1, .5, 1, 5, 30},
		}, []string{"route"}),
		killSwitch: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "signerd_kill_switch_engaged", Help: "1 while the kill switch is engaged (however it was engaged)."}, engaged),
		inflight:   prometheus.NewGauge(prometheus.GaugeOpts{Name: "signerd_inflight_requests", Help: "Signing requests in flight."}),
	}
	m.reg.MustRegister(m.decisions, m.requests, m.latency, m.killSwitch, m.inflight,
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m.reg.MustRegister(ledgerCounters(stats)...)
	return m
}

func (d *Daemon) metricsHandler() http.Handler {
	return promhttp.HandlerFor(d.metrics.reg, promhttp.HandlerOpts{})
}

func pid() int { return os.Getpid() }
