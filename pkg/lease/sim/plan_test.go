package sim

import (
	"fmt"
	"github.com/iotgw/iotgw/pkg/outbox"
	"hash/fnv"
	"math/rand/v2"
	"time"
)

// plan is one seed's world: its settings and its whole fault schedule,
// drawn from the seed before anything runs. Faults that hit individual
// calls (a dropped connection, a lost answer, a backend's answer) are not
// drawn here but hashed from the seed and the call's identity (connection,
// operation, how many such calls came before), so they do not depend on
// how goroutines interleave.
type plan struct {
	seed     int64
	gateways int
	devices  int
	lease    time.Duration
	timeout  time.Duration
	window   time.Duration // the fleet-wide freshness window
	quota    int
	// maxPayloadMemory is backend.max_payload_memory: small, so payloads
	// are read back from the database right before their POST.
	maxPayloadMemory int64
	workers          int
	maxAttempts      int
	batchMax         int // backend.batch_max: 1, or a batch of up to this many devices' rows

	clock   []time.Duration // each gateway's wall clock offset
	outages []outage
	crashes []crash
	// pFail, pLose, pStall: the chance that one database call fails
	// without effect, takes effect and loses its answer (commit, finish),
	// or stalls for up to 2×timeout.
	pFail, pLose, pStall float64
	// backend answer mix while faults are on (the rest answers 2xx).
	p4xx, p5xx, pSlow, pHang float64

	msgs       []*message
	deliveries []*delivery
	traffic    time.Duration // faults and traffic stop after this
}

// outage makes every call of one gateway's connection fail (drop) or
// stall until its end (freeze: a TCP proxy that stops forwarding).
type outage struct {
	gw       int
	from, to time.Duration
	freeze   bool
}

// crash kills a gateway (no shutdown, memory lost) and starts a new one
// (a new owner) in its slot after down.
type crash struct {
	gw       int
	at, down time.Duration
}

type message struct {
	dev, id string
	key     [16]byte
	counter int64         // a counter-mode device's counter; 0 for timestamp mode
	ts      time.Duration // the device's clock at publish, from the start
	payload []byte
}

func (m *message) String() string { return m.dev + "/" + m.id }

// delivery is one copy of a message reaching one gateway's subscription
// (a broker delivery, a redelivery after a crash, a device's resend, or
// an attacker's replay).
type delivery struct {
	msg *message
	gw  int
	at  time.Duration
}

func newPlan(seed int64) *plan {
	r := rand.New(rand.NewPCG(uint64(seed), 0x5eed)) //nolint:gosec // a simulation's schedule, not a secret
	dur := func(lo, hi time.Duration) time.Duration { return lo + time.Duration(r.Int64N(int64(hi-lo)+1)) }
	p := &plan{seed: seed, gateways: 1 + r.IntN(3), devices: 1 + r.IntN(4), window: time.Minute,
		maxAttempts: 4 + r.IntN(4), workers: 1 + r.IntN(3), traffic: 100 * time.Second}
	p.lease = dur(4*time.Second, 10*time.Second).Round(time.Second)
	p.timeout = dur(time.Second, p.lease/2).Round(100 * time.Millisecond)
	if r.IntN(3) == 0 {
		p.quota = 3 + r.IntN(4)
	}
	p.maxPayloadMemory = []int64{1, 16, 1 << 20}[r.IntN(3)]
	p.batchMax = 1
	if r.IntN(3) == 0 {
		p.batchMax = 2 + r.IntN(3)
	}
	for range p.gateways {
		off := time.Duration(0)
		if r.IntN(2) == 0 {
			off = dur(-50*time.Second, 50*time.Second)
		}
		p.clock = append(p.clock, off)
	}
	for g := range p.gateways {
		for range r.IntN(4) {
			from := dur(0, p.traffic)
			p.outages = append(p.outages, outage{gw: g, from: from, to: from + dur(200*time.Millisecond, 4*p.lease), freeze: r.IntN(2) == 0})
		}
	}
	for g := range p.gateways {
		if r.IntN(3) == 0 { // a gateway's slot holds one incarnation at a time: at most one crash each
			p.crashes = append(p.crashes, crash{gw: g, at: dur(2*time.Second, p.traffic-10*time.Second), down: dur(0, 20*time.Second)})
		}
	}
	p.pFail, p.pLose, p.pStall = r.Float64()*0.05, r.Float64()*0.1, r.Float64()*0.05
	p.p4xx, p.p5xx, p.pSlow, p.pHang = r.Float64()*0.05, r.Float64()*0.3, r.Float64()*0.15, r.Float64()*0.05
	n := 0
	for d := range p.devices {
		dev := fmt.Sprintf("dev%d", d)
		devClock := dur(-3*time.Second, 3*time.Second)
		at := time.Duration(0)
		gap := []time.Duration{2 * time.Second, 6 * time.Second, 15 * time.Second}[r.IntN(3)] // bursts build backlogs
		// A third of the devices use counter mode (chosen by hash, so the
		// random stream, and every seed's plan otherwise, stays as it was).
		counted := p.hash("counter mode", d) < 1.0/3
		for k := range 3 + r.IntN(10) {
			at += dur(0, gap)
			n++
			m := &message{dev: dev, id: fmt.Sprintf("m%d", k), ts: at + devClock, payload: fmt.Appendf(nil, `{"dev":%q,"k":%d}`, dev, k)}
			copy(m.key[:], fmt.Sprintf("%s-%d", dev, k))
			if counted {
				m.counter = int64(k + 1)
				m.key = outbox.CounterID(m.counter)
			}
			p.msgs = append(p.msgs, m)
			p.deliveries = append(p.deliveries, &delivery{msg: m, gw: r.IntN(p.gateways), at: at})
			if r.IntN(5) == 0 { // a copy reaches another gateway (MQTT redelivery, a device's resend)
				p.deliveries = append(p.deliveries, &delivery{msg: m, gw: r.IntN(p.gateways), at: at + dur(0, 3*time.Second)})
			}
			if r.IntN(6) == 0 { // a replay around the edge of the freshness window
				p.deliveries = append(p.deliveries, &delivery{msg: m, gw: r.IntN(p.gateways), at: at + p.window + dur(-20*time.Second, 40*time.Second)})
			}
		}
	}
	return p
}

// hash returns a number in [0, 1) fixed by the seed and parts.
func (p *plan) hash(parts ...any) float64 {
	h := fnv.New64a()
	fmt.Fprint(h, p.seed)
	for _, x := range parts {
		fmt.Fprint(h, "\x00", x)
	}
	x := h.Sum64() // splitmix64's finalizer: FNV's high bits barely move with the last byte
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>11) / (1 << 53)
}

func (p *plan) String() string {
	return fmt.Sprintf("gateways=%d devices=%d msgs=%d deliveries=%d lease=%v timeout=%v quota=%d payload_mem=%d workers=%d batch=%d clocks=%v outages=%d crashes=%d",
		p.gateways, p.devices, len(p.msgs), len(p.deliveries), p.lease, p.timeout, p.quota, p.maxPayloadMemory, p.workers, p.batchMax, p.clock, len(p.outages), len(p.crashes))
}
