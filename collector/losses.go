// Loss accounting: what the kernel and the collector could not hand on,
// counted per stage and reason, and carried by loss events.

package collector

// Stats counts what the collector saw and lost since it started.
type Stats struct {
	Events uint64 // decoded and queued
	Lost   []Loss // one entry per stage and reason, zeros included
	// ExitsLost counts process exits the kernel could not report: no event
	// is lost, but the process's cache entry ages out instead of going.
	ExitsLost uint64
	// ExecsLost counts execve calls the kernel could not report: a process
	// that is gone before /proc is read then has no exe.
	ExecsLost uint64
	// OutcomesLost counts, of the ring_buffer_full losses, the connects
	// whose start was read but whose outcome the ring had no room for.
	OutcomesLost uint64
	// PlaintextLost counts first data to a TLS port that was no TLS
	// handshake, which the kernel could not report: its connect goes
	// without Plaintext.
	PlaintextLost uint64
	// HeldFull counts established connects to TLS ports that went
	// without waiting for their first data, too many waiting already.
	HeldFull uint64
	Hellos   HelloStats
}

// Loss counts events lost at one stage for one reason.
type Loss struct {
	Stage, Reason string
	Count         uint64
}

// Stats returns the counts so far.
func (c *Collector) Stats() Stats {
	s := Stats{Events: c.events.Load(), Lost: make([]Loss, numLossReasons)}
	for i, r := range lossReasons {
		s.Lost[i] = Loss{Stage: r.stage, Reason: r.reason, Count: c.lost[i].Load()}
	}
	s.ExitsLost = c.noticesLost[connectStatSTAT_EXIT_LOST].Load()
	s.ExecsLost = c.noticesLost[connectStatSTAT_EXEC_LOST].Load()
	s.OutcomesLost = c.outcomesLost.Load()
	s.PlaintextLost = c.noticesLost[connectStatSTAT_PLAINTEXT_LOST].Load()
	s.HeldFull = c.heldFull.Load()
	if h := c.helloStats.Load(); h != nil {
		s.Hellos = *h
	}
	return s
}

type lossReason int

const (
	lossRingBuffer lossReason = iota
	lossConnFull
	lossConnExpired
	lossPending
	lossQueue
	lossMalformed
	numLossReasons
)

var lossReasons = [numLossReasons]struct{ stage, reason string }{
	lossRingBuffer:  {StageKernel, ReasonRingBufferFull},
	lossConnFull:    {StageKernel, ReasonConnFull},
	lossConnExpired: {StageKernel, ReasonConnExpired},
	lossPending:     {StageKernel, ReasonPendingFull},
	lossQueue:       {StageQueue, ReasonQueueFull},
	lossMalformed:   {StageQueue, ReasonMalformed},
}

// The kernel's stats map slots and the loss reasons they feed; noLoss
// marks a slot that counts no event, kept in noticesLost instead.
var kernelLoss = [connectStatSTAT_MAX]lossReason{
	connectStatSTAT_RINGBUF_FULL:   lossRingBuffer,
	connectStatSTAT_PENDING_FULL:   lossPending,
	connectStatSTAT_EXIT_LOST:      noLoss,
	connectStatSTAT_PAYLOAD_LOST:   lossRingBuffer,
	connectStatSTAT_EXEC_LOST:      noLoss,
	connectStatSTAT_OUTCOME_LOST:   lossRingBuffer,
	connectStatSTAT_PLAINTEXT_LOST: noLoss,
}

const noLoss lossReason = -1

// malformed drops a record that did not decode, and counts it.
func (c *Collector) malformed(err error) {
	c.lose(lossMalformed, 1)
	c.log.Warn("dropping malformed ring buffer record", "error", err)
}

func (c *Collector) lose(r lossReason, n uint64) {
	c.lost[r].Add(n)
	c.unreported[r] += n
}

func (c *Collector) hasUnreported() bool {
	for _, n := range c.unreported {
		if n > 0 {
			return true
		}
	}
	return false
}

// pollKernelLosses adds what the kernel's loss counters grew by.
func (c *Collector) pollKernelLosses() {
	for i := range connectStatSTAT_MAX {
		key := uint32(i)
		if err := c.objs.Stats.Lookup(&key, &c.percpu); err != nil {
			c.log.Warn("read kernel loss counters", "error", err)
			return
		}
		var sum uint64
		for _, v := range c.percpu {
			sum += v
		}
		if sum > c.kernelSeen[i] {
			n := sum - c.kernelSeen[i]
			if r := kernelLoss[i]; r == noLoss {
				c.noticesLost[i].Add(n)
			} else {
				c.lose(r, n)
			}
			if i == connectStatSTAT_OUTCOME_LOST {
				c.orphans += n
				c.outcomesLost.Add(n)
			}
			c.kernelSeen[i] = sum
		}
	}
}
