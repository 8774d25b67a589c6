package manager

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/url"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/common/expfmt"

	"github.com/wagi-fcgi/wagi-fcgi/internal/fleetbudget"
	"github.com/wagi-fcgi/wagi-fcgi/ipfs"
	"github.com/wagi-fcgi/wagi-fcgi/manager/internal/runner"
)

// durationSamples is how many recent request durations per module the
// status page keeps for its p50/p99.
const durationSamples = 1024

// maxStatusModules bounds the modules the status page keeps counters for
// (each holds its duration samples, ~10 KB): an open gateway would
// otherwise add one per CID ever served. Past it, the module seen least
// recently is forgotten.
const maxStatusModules = 1024

// moduleStats are the counters of one module (by content hash).
type moduleStats struct {
	ref      string
	route    string
	budget   time.Duration
	classes  [6]int64 // requests by status class: [1] 1xx ... [5] 5xx
	timeouts int64    // killed for wall clock or CPU
	seconds  prometheus.Histogram
	ring     [durationSamples]time.Duration
	n        int       // samples written into ring, total
	last     time.Time // when it was last observed
}

// statusBook collects what the status page shows.
type statusBook struct {
	start time.Time

	mu      sync.Mutex
	modules map[string]*moduleStats // by module key
	kills   map[killReason]int64    // children killed, by reason
}

func newStatusBook() *statusBook {
	return &statusBook{start: time.Now(), modules: map[string]*moduleStats{}, kills: map[killReason]int64{}}
}

// observe records one finished request.
func (b *statusBook) observe(key, ref, route string, budget time.Duration, status int, wall time.Duration, killed killReason) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if killed != notKilled {
		b.kills[killed]++
	}
	if key == "" {
		return
	}
	s := b.entryLocked(key, ref, route, budget)
	if c := status / 100; c >= 1 && c <= 5 {
		s.classes[c]++
	}
	if killed.ForLimit() {
		s.timeouts++
	}
	s.last = time.Now()
	s.seconds.Observe(wall.Seconds())
	s.ring[s.n%durationSamples] = wall
	s.n++
}

// forgetOldestLocked drops the module observed least recently.
func (b *statusBook) forgetOldestLocked() {
	var oldest string
	var at time.Time
	for k, s := range b.modules {
		if oldest == "" || s.last.Before(at) {
			oldest, at = k, s.last
		}
	}
	delete(b.modules, oldest)
}

// entryLocked returns the stats of module key, made on first use (the
// module seen least recently is forgotten past maxStatusModules). Callers
// hold mu.
func (b *statusBook) entryLocked(key, ref, route string, budget time.Duration) *moduleStats {
	s, ok := b.modules[key]
	if !ok {
		if len(b.modules) >= maxStatusModules {
			b.forgetOldestLocked()
		}
		s = &moduleStats{ref: ref, route: route, budget: budget, last: time.Now(), seconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "wagi_module_request_duration_seconds", Help: "Wall-clock time of requests run by the module.",
			Buckets: []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
		})}
		b.modules[key] = s
	}
	return s
}

// compiled lists module key, whose compile was charged to it, even if no
// request ever runs it (a module that fails to compile).
func (b *statusBook) compiled(key, ref, route string, budget time.Duration) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.entryLocked(key, ref, route, budget)
}

// quantiles returns p50 and p99 of the recent durations.
func (s *moduleStats) quantiles() (p50, p99 time.Duration) {
	n := min(s.n, durationSamples)
	if n == 0 {
		return 0, 0
	}
	d := slices.Clone(s.ring[:n])
	slices.Sort(d)
	return d[(n-1)*50/100], d[(n-1)*99/100]
}

// Status is what the status page reports.
type Status struct {
	Start      time.Time      `json:"start_time"`
	Uptime     float64        `json:"start_since_seconds"`
	Pool       PoolStatus     `json:"pool"`
	Modules    []ModuleStatus `json:"modules"`
	Children   []ChildStatus  `json:"children,omitempty"`
	IPFSFetchs int64          `json:"ipfs_fetches"`
	// Gateway is the budget all gateway CIDs share; nil without a gateway.
	Gateway *GatewayStatus `json:"gateway,omitempty"`
	// Pinning is what the node keeps pinned in kubo; nil without an IPFS
	// node.
	Pinning *PinningStatus `json:"pinning,omitempty"`
	// Peers are the IPFS node's swarm peers; nil without an IPFS node.
	Peers *PeersStatus `json:"peers,omitempty"`
	// Published are the MFS volumes this node publishes under IPNS names.
	Published []PublishedStatus `json:"published,omitempty"`
	// Fleet is the store of fleet-wide budgets; nil without [budget] shared.
	Fleet *FleetStatus `json:"fleet,omitempty"`
}

// PublishedStatus describes one MFS volume published under an IPNS name.
type PublishedStatus struct {
	MFS       string `json:"mfs"`
	Key       string `json:"key"`
	Name      string `json:"name,omitempty"`      // the IPNS name, once published
	CID       string `json:"cid,omitempty"`       // the version last published
	Published string `json:"published,omitempty"` // when, RFC 3339
	Error     string `json:"error,omitempty"`     // the last error, if the last step failed
}

// FleetStatus describes the store of the fleet-wide budgets.
type FleetStatus struct {
	Store      string     `json:"store"` // the URL without its password
	Node       string     `json:"node"`
	Connected  bool       `json:"connected"`
	Since      time.Time  `json:"since"` // when it was last connected or lost
	LastSync   *time.Time `json:"last_sync,omitempty"`
	LastError  string     `json:"last_error,omitempty"`
	LocalShare float64    `json:"local_share"`
}

// PinningStatus describes pinning ([ipfs] pin, pin_recent, pin_max).
type PinningStatus struct {
	On        bool    `json:"on"`
	Recent    float64 `json:"pin_recent_seconds"`
	Max       int     `json:"pin_max"`
	Reachable bool    `json:"node_reachable"`
	// Pins are the CIDs the rules keep pinned, as of the pinner's last
	// pass: the config's first, then the most recently served.
	Pins []PinStatus `json:"pins"`
}

// PinStatus describes one CID kept pinned.
type PinStatus struct {
	CID  string `json:"cid"`
	Path string `json:"path"`
	// Why is "config ROUTE" (with "volume GUEST" for a volume), or
	// "served".
	Why        string `json:"why"`
	LastServed string `json:"last_served,omitempty"` // RFC 3339
	Pinned     string `json:"pinned"`                // "yes", "pending" or "failed"
	// Owner is "wagi-fcgi", or "other" when someone else's pin keeps the
	// CID (wagi-fcgi leaves it alone).
	Owner string `json:"owner"`
	Error string `json:"error,omitempty"`
}

// PeersStatus describes the IPFS node's swarm peers.
type PeersStatus struct {
	Count int         `json:"count"`
	Peers []ipfs.Peer `json:"peers"`
	Error string      `json:"error,omitempty"` // the node did not answer in time
}

// GatewayStatus describes the gateway-wide daily budget.
type GatewayStatus struct {
	CPUToday float64 `json:"cpu_today_seconds"`
	DailyCPU float64 `json:"daily_cpu_seconds"`
	// FleetCPUToday is every node's spend as of the last sync (with
	// [budget] shared and once synced).
	FleetCPUToday *float64 `json:"fleet_cpu_today_seconds,omitempty"`
}

// PoolStatus describes the child pool.
type PoolStatus struct {
	Children    int              `json:"children"`
	Busy        int              `json:"busy"`
	Idle        int              `json:"idle"`
	Queue       int64            `json:"queue"`
	MaxQueue    int64            `json:"max_queue"`
	Spawned     int64            `json:"spawned"`
	Recycled    int64            `json:"recycled"`
	Crashed     int64            `json:"crashed"`
	Killed      map[string]int64 `json:"killed"`
	Requests    int64            `json:"requests"`
	ChargedCPUs float64          `json:"charged_cpu_seconds"`
}

// ModuleStatus describes one module.
type ModuleStatus struct {
	Module   string           `json:"module"` // content hash (sha256, hex)
	Ref      string           `json:"ref"`
	Route    string           `json:"route"`
	Requests map[string]int64 `json:"requests"` // by status class: "2xx", ...
	Timeouts int64            `json:"timeouts"`
	CPUToday float64          `json:"cpu_today_seconds"` // this node's
	// FleetCPUToday is every node's spend as of the last sync (with
	// [budget] shared and once synced).
	FleetCPUToday *float64 `json:"fleet_cpu_today_seconds,omitempty"`
	DailyCPU      float64  `json:"daily_cpu_seconds"`
	P50Seconds    float64  `json:"p50_seconds"`
	P99Seconds    float64  `json:"p99_seconds"`
}

// ChildStatus describes one child (with ?full).
type ChildStatus struct {
	Slot       int     `json:"slot"`
	PID        int     `json:"pid"`
	State      string  `json:"state"`
	Requests   int64   `json:"requests"`
	CPUSeconds float64 `json:"cpu_seconds"`
	RSS        int64   `json:"rss_bytes"`
	StartTime  string  `json:"start_time"`
}

// Status gathers the status page's figures.
func (m *Manager) Status(full bool) Status {
	st := m.Stats()
	b := m.status
	b.mu.Lock()
	kills := make(map[string]int64, len(b.kills))
	for k, v := range b.kills {
		kills[k.String()] = v
	}
	now := m.opts.Now()
	mods := []ModuleStatus{}
	for key, s := range b.modules {
		p50, p99 := s.quantiles()
		ms := ModuleStatus{
			Module: key, Ref: s.ref, Route: s.route, Timeouts: s.timeouts,
			DailyCPU: s.budget.Seconds(), P50Seconds: p50.Seconds(), P99Seconds: p99.Seconds(),
			Requests: map[string]int64{},
		}
		for c := 1; c <= 5; c++ {
			ms.Requests[fmt.Sprintf("%dxx", c)] = s.classes[c]
		}
		mods = append(mods, ms)
	}
	b.mu.Unlock()
	// Spend comes from the ledger, which knows each module's day.
	if m.ledger != nil {
		for i := range mods {
			day := m.dayOf(mods[i].Module, now)
			mods[i].CPUToday = m.ledger.Spent(mods[i].Module, day).Seconds()
			mods[i].FleetCPUToday = m.fleetSpent(mods[i].Module, day)
		}
	}
	sort.Slice(mods, func(i, j int) bool {
		return mods[i].Route < mods[j].Route || (mods[i].Route == mods[j].Route && mods[i].Module < mods[j].Module)
	})
	out := Status{
		Start:  b.start,
		Uptime: time.Since(b.start).Seconds(),
		Pool: PoolStatus{
			Children: st.Children, Idle: st.Idle, Busy: st.Children - st.Idle,
			Queue: m.pool.waiting.Load(), MaxQueue: m.pool.stats.maxQueue.Load(),
			Spawned: st.Spawned, Recycled: st.Recycled, Crashed: st.Crashed, Killed: kills,
			Requests: st.Requests, ChargedCPUs: st.ChargedCPU.Seconds(),
		},
		Modules:    mods,
		IPFSFetchs: m.fetches.Load(),
	}
	if out.Pool.Busy < 0 {
		out.Pool.Busy = 0
	}
	if m.gateway != nil {
		g := &GatewayStatus{DailyCPU: m.cfg.IPFS.GatewayDailyCPU.Seconds()}
		if m.ledger != nil {
			day := m.cfg.Limits.DayStart.Start(now)
			g.CPUToday = m.ledger.Spent(gatewayAccount, day).Seconds()
			g.FleetCPUToday = m.fleetSpent(gatewayAccount, day)
		}
		out.Gateway = g
	}
	if m.ipfs != nil {
		out.Pinning, out.Peers = m.pinningStatus(), m.peersStatus()
	}
	if m.publisher != nil {
		for _, p := range m.publisher.States() {
			ps := PublishedStatus{MFS: p.Path, Key: p.Key, Name: p.Name, CID: p.CID, Error: p.Err}
			if !p.Published.IsZero() {
				ps.Published = p.Published.UTC().Format(time.RFC3339)
			}
			out.Published = append(out.Published, ps)
		}
	}
	if f := m.budgets.fleet; f != nil {
		fs := f.Status()
		out.Fleet = &FleetStatus{Store: fs.Store, Node: fs.Node, Connected: fs.Connected, Since: fs.Since,
			LastError: fs.LastError, LocalShare: m.cfg.Budget.LocalShare}
		if !fs.LastSync.IsZero() {
			out.Fleet.LastSync = &fs.LastSync
		}
	}
	if full {
		for _, c := range m.Children() {
			out.Children = append(out.Children, ChildStatus{
				Slot: c.Slot, PID: c.PID, State: c.State, Requests: c.Requests,
				CPUSeconds: c.CPU.Seconds(), RSS: c.RSS, StartTime: c.Started.UTC().Format(time.RFC3339),
			})
		}
	}
	return out
}

// fleetSpent is the fleet's spend on an account-day as of the last sync,
// or nil without a fleet or before the account was synced.
func (m *Manager) fleetSpent(key string, day time.Time) *float64 {
	if m.budgets.fleet == nil {
		return nil
	}
	d, ok := m.budgets.fleet.FleetSpent(fleetbudget.Account{Key: key, Day: day.Unix()})
	if !ok {
		return nil
	}
	s := d.Seconds()
	return &s
}

// dayOf is the current budget day of a module, by the limits of a route
// that serves it.
func (m *Manager) dayOf(key string, now time.Time) time.Time {
	t := m.routes.Load()
	if t != nil {
		for _, tg := range t.All() {
			if mod, _ := tg.src.loaded(); mod != nil && mod.key == key {
				return tg.limits.DayStart.Start(now)
			}
		}
	}
	return m.cfg.Limits.DayStart.Start(now)
}

// writeStatus answers the status page in the format the query asks for:
// ?json, ?openmetrics (Prometheus/OpenMetrics text), or plain text; &full
// adds the children.
func (m *Manager) writeStatus(w io.Writer, query string) error {
	q, _ := url.ParseQuery(query)
	_, full := q["full"]
	st := m.Status(full)
	var body bytes.Buffer
	ctype := "text/plain; charset=utf-8"
	switch {
	case q.Has("json"):
		ctype = "application/json"
		enc := json.NewEncoder(&body)
		enc.SetIndent("", "  ")
		if err := enc.Encode(st); err != nil {
			return err
		}
	case q.Has("openmetrics"), q.Has("prometheus"):
		format := expfmt.NewFormat(expfmt.TypeOpenMetrics)
		if q.Has("prometheus") {
			format = expfmt.NewFormat(expfmt.TypeTextPlain)
		}
		ctype = string(format)
		if err := m.writeMetrics(&body, format, st); err != nil {
			return err
		}
	default:
		writeStatusText(&body, st)
	}
	_, err := fmt.Fprintf(w, "Status: 200 OK\r\nContent-Type: %s\r\nCache-Control: no-store\r\n\r\n", ctype)
	if err == nil {
		_, err = w.Write(body.Bytes())
	}
	return err
}

func writeStatusText(w io.Writer, st Status) {
	p := st.Pool
	fmt.Fprintf(w, "start time:           %s\n", st.Start.UTC().Format(time.RFC3339))
	fmt.Fprintf(w, "start since:          %.0f\n", st.Uptime)
	fmt.Fprintf(w, "children:             %d\n", p.Children)
	fmt.Fprintf(w, "busy children:        %d\n", p.Busy)
	fmt.Fprintf(w, "idle children:        %d\n", p.Idle)
	fmt.Fprintf(w, "queue:                %d\n", p.Queue)
	fmt.Fprintf(w, "max queue:            %d\n", p.MaxQueue)
	fmt.Fprintf(w, "spawned:              %d\n", p.Spawned)
	fmt.Fprintf(w, "recycled:             %d\n", p.Recycled)
	fmt.Fprintf(w, "crashed:              %d\n", p.Crashed)
	reasons := make([]string, 0, len(p.Killed))
	for r := range p.Killed {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	for _, r := range reasons {
		fmt.Fprintf(w, "killed (%s):%s%d\n", r, strings.Repeat(" ", max(1, 12-len(r))), p.Killed[r])
	}
	fmt.Fprintf(w, "requests:             %d\n", p.Requests)
	fmt.Fprintf(w, "charged cpu seconds:  %.3f\n", p.ChargedCPUs)
	fmt.Fprintf(w, "ipfs fetches:         %d\n", st.IPFSFetchs)
	if g := st.Gateway; g != nil {
		fmt.Fprintf(w, "gateway cpu today:    %.3f of %.0f\n", g.CPUToday, g.DailyCPU)
		if g.FleetCPUToday != nil {
			fmt.Fprintf(w, "gateway fleet cpu:    %.3f of %.0f\n", *g.FleetCPUToday, g.DailyCPU)
		}
	}
	if f := st.Fleet; f != nil {
		state := "connected"
		if !f.Connected {
			state = "unreachable"
		}
		fmt.Fprintf(w, "fleet store:          %s (%s since %s)\n", f.Store, state, f.Since.UTC().Format(time.RFC3339))
		fmt.Fprintf(w, "fleet node:           %s\n", f.Node)
		if f.LastSync != nil {
			fmt.Fprintf(w, "fleet last sync:      %s\n", f.LastSync.UTC().Format(time.RFC3339Nano))
		}
		if f.LastError != "" {
			fmt.Fprintf(w, "fleet last error:     %s\n", f.LastError)
		}
	}
	writePinsText(w, st)
	for _, ms := range st.Modules {
		fmt.Fprintf(w, "\nmodule:               %s\n", ms.Module)
		fmt.Fprintf(w, "ref:                  %s\n", ms.Ref)
		fmt.Fprintf(w, "route:                %s\n", ms.Route)
		fmt.Fprintf(w, "requests:             1xx=%d 2xx=%d 3xx=%d 4xx=%d 5xx=%d\n",
			ms.Requests["1xx"], ms.Requests["2xx"], ms.Requests["3xx"], ms.Requests["4xx"], ms.Requests["5xx"])
		fmt.Fprintf(w, "timeouts:             %d\n", ms.Timeouts)
		fmt.Fprintf(w, "cpu today seconds:    %.3f of %.0f\n", ms.CPUToday, ms.DailyCPU)
		if ms.FleetCPUToday != nil {
			fmt.Fprintf(w, "fleet cpu today:      %.3f of %.0f\n", *ms.FleetCPUToday, ms.DailyCPU)
		}
		fmt.Fprintf(w, "p50 / p99 seconds:    %.6f / %.6f\n", ms.P50Seconds, ms.P99Seconds)
	}
	for _, p := range st.Published {
		fmt.Fprintf(w, "\npublished mfs:        %s\nipns key:             %s\nipns name:            %s\npublished cid:        %s\npublished at:         %s\n",
			p.MFS, p.Key, p.Name, p.CID, p.Published)
		if p.Error != "" {
			fmt.Fprintf(w, "publish error:        %s\n", p.Error)
		}
	}
	for _, c := range st.Children {
		fmt.Fprintf(w, "\nchild:                %d (pid %d, %s)\nrequests:             %d\ncpu seconds:          %.3f\nrss bytes:            %d\nstart time:           %s\n",
			c.Slot, c.PID, c.State, c.Requests, c.CPUSeconds, c.RSS, c.StartTime)
	}
}

// writeMetrics renders the status as metrics with the Prometheus client
// library's types and encoders.
func (m *Manager) writeMetrics(w io.Writer, format expfmt.Format, st Status) error {
	reg := prometheus.NewPedanticRegistry()
	gauge := func(name, help string, v float64) {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: name, Help: help})
		g.Set(v)
		reg.MustRegister(g)
	}
	counter := func(name, help string, v float64) {
		c := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
		c.Add(v)
		reg.MustRegister(c)
	}
	p := st.Pool
	gauge("wagi_children", "Live child processes.", float64(p.Children))
	gauge("wagi_children_busy", "Children running a request.", float64(p.Busy))
	gauge("wagi_children_idle", "Children waiting for a request.", float64(p.Idle))
	gauge("wagi_queue_length", "Requests waiting for a child.", float64(p.Queue))
	gauge("wagi_queue_max_length", "Longest queue since start.", float64(p.MaxQueue))
	counter("wagi_children_spawned_total", "Children started.", float64(p.Spawned))
	counter("wagi_children_recycled_total", "Children retired after max_requests.", float64(p.Recycled))
	counter("wagi_children_crashed_total", "Children that died on their own.", float64(p.Crashed))
	counter("wagi_requests_total", "Requests run on a child.", float64(p.Requests))
	counter("wagi_cpu_charged_seconds_total", "CPU time charged to modules.", p.ChargedCPUs)
	counter("wagi_ipfs_fetches_total", "Modules fetched from IPFS.", float64(st.IPFSFetchs))
	killed := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wagi_children_killed_total", Help: "Children killed by the manager, by reason."}, []string{"reason"})
	if g := st.Gateway; g != nil {
		gauge("wagi_gateway_cpu_today_seconds", "CPU used by all gateway CIDs in the current budget day.", g.CPUToday)
		gauge("wagi_gateway_cpu_daily_budget_seconds", "The daily CPU budget all gateway CIDs share.", g.DailyCPU)
	}
	if f := st.Fleet; f != nil {
		up := 0.0
		if f.Connected {
			up = 1
		}
		gauge("wagi_fleet_store_up", "1 while the fleet budget store answers, 0 while each budget is held to the local share.", up)
	}
	for _, r := range runner.RunKills {
		killed.WithLabelValues(r.String()).Add(float64(p.Killed[r.String()]))
	}
	if pn := st.Pinning; pn != nil {
		pins := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "wagi_ipfs_pins", Help: "CIDs kept pinned in kubo, by state (yes, pending, failed)."}, []string{"state"})
		for _, state := range []string{"yes", "pending", "failed"} {
			pins.WithLabelValues(state)
		}
		for _, pin := range pn.Pins {
			pins.WithLabelValues(pin.Pinned).Inc()
		}
		reg.MustRegister(pins)
	}
	if pe := st.Peers; pe != nil {
		gauge("wagi_ipfs_peers", "Swarm peers of the IPFS node.", float64(pe.Count))
	}
	reg.MustRegister(killed)

	labels := []string{"module", "route"}
	reqs := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wagi_module_requests_total", Help: "Requests by module and status class."}, append(labels, "class"))
	timeouts := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "wagi_module_timeouts_total", Help: "Requests killed for their wall-clock or CPU limit."}, labels)
	cpuToday := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "wagi_module_cpu_today_seconds", Help: "CPU used in the module's current budget day."}, labels)
	budget := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "wagi_module_cpu_daily_budget_seconds", Help: "The module's daily CPU budget."}, labels)
	fleetToday := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "wagi_module_fleet_cpu_today_seconds", Help: "CPU used by the whole fleet in the module's current budget day, as of the last sync."}, labels)
	reg.MustRegister(reqs, timeouts, cpuToday, budget, fleetToday)
	for _, ms := range st.Modules {
		lv := []string{ms.Module[:min(12, len(ms.Module))], ms.Route}
		for class, n := range ms.Requests {
			reqs.WithLabelValues(append(lv, class)...).Add(float64(n))
		}
		timeouts.WithLabelValues(lv...).Add(float64(ms.Timeouts))
		cpuToday.WithLabelValues(lv...).Set(ms.CPUToday)
		budget.WithLabelValues(lv...).Set(ms.DailyCPU)
		if ms.FleetCPUToday != nil {
			fleetToday.WithLabelValues(lv...).Set(*ms.FleetCPUToday)
		}
	}
	// Duration histograms are kept live per module; wrap each with its
	// labels for this scrape.
	m.status.mu.Lock()
	for key, s := range m.status.modules {
		c := prometheus.WrapRegistererWith(prometheus.Labels{"module": key[:min(12, len(key))], "route": s.route}, reg)
		if err := c.Register(s.seconds); err != nil {
			m.status.mu.Unlock()
			return err
		}
	}
	m.status.mu.Unlock()

	mfs, err := reg.Gather()
	if err != nil {
		return err
	}
	enc := expfmt.NewEncoder(w, format)
	for _, mf := range mfs {
		if err := enc.Encode(mf); err != nil {
			return err
		}
	}
	if closer, ok := enc.(expfmt.Closer); ok {
		return closer.Close()
	}
	return nil
}
