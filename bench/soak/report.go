// The verdict: flat series, and every call accounted for.

package main

import (
	"fmt"
	"io"
	"time"
)

// slope is the least-squares slope of ys against xs (minutes), per minute.
func slope(xs, ys []float64) float64 {
	n := float64(len(xs))
	if n < 2 {
		return 0
	}
	var sx, sy, sxx, sxy float64
	for i := range xs {
		sx += xs[i]
		sy += ys[i]
		sxx += xs[i] * xs[i]
		sxy += xs[i] * ys[i]
	}
	d := n*sxx - sx*sx
	if d == 0 {
		return 0
	}
	return (n*sxy - sx*sy) / d
}

func report(w io.Writer, cfg config, rows []sample, m made, g got, reloads int) bool {
	ok := true
	fmt.Fprintf(w, "soak: %v of load, Kafka away %v from %v, %d policy rewrites, %d samples\n",
		cfg.duration, cfg.outage, cfg.duration*3/10, reloads, len(rows))
	// Before: from the end of the warm-up (a fifth of the run, at least
	// 20 s) to the outage. After: from the end of the outage and a
	// settling time (a tenth of the run, at least 10 s) to the end.
	beforeFrom, beforeTo := max(cfg.duration/5, 20*time.Second), cfg.duration*3/10
	afterFrom := beforeTo + cfg.outage + max(cfg.duration/10, 10*time.Second)
	series := []struct {
		name        string
		get         func(sample) float64
		slope, step float64
	}{
		{"rss_mib", func(r sample) float64 { return r.rssKiB / 1024 }, cfg.rssSlope, cfg.rssStep},
		{"goroutines", func(r sample) float64 { return r.goroutines }, cfg.countSlope, cfg.countStep},
		{"fds", func(r sample) float64 { return r.fds }, cfg.countSlope, cfg.countStep},
		{"bpf_maps", func(r sample) float64 { return r.maps }, cfg.countSlope, cfg.countStep},
		{"bpf_memlock_mib", func(r sample) float64 { return r.mapMemlockKiB / 1024 }, cfg.rssSlope, cfg.rssStep},
	}
	fmt.Fprintf(w, "%-16s %12s %12s %12s %8s %10s %8s\n", "series", "mean before", "mean after", "slope/min", "bound", "step", "bound")
	for _, sr := range series {
		var by, ax, ay []float64
		for _, r := range rows {
			switch {
			case r.at >= beforeFrom && r.at < beforeTo:
				by = append(by, sr.get(r))
			case r.at >= afterFrom:
				ax, ay = append(ax, r.at.Minutes()), append(ay, sr.get(r))
			}
		}
		if len(by) < 2 || len(ay) < 3 {
			fmt.Fprintf(w, "%-16s too few samples: %d before the outage, %d after\n", sr.name, len(by), len(ay))
			ok = false
			continue
		}
		sl, step := slope(ax, ay), mean(ay)-mean(by)
		verdict := "ok"
		if sl > sr.slope || step > sr.step {
			verdict = "FAIL"
			ok = false
		}
		fmt.Fprintf(w, "%-16s %12.1f %12.1f %12.3f %8.1f %10.2f %8.1f  %s\n", sr.name, mean(by), mean(ay), sl, sr.slope, step, sr.step, verdict)
	}
	var lost uint64
	for _, n := range g.lost {
		lost += n
	}
	want := m.connects + m.hellos
	have := g.connects + g.hellos
	fmt.Fprintf(w, "made: %v; read back: %d connect and %d tls events (%d records, %d duplicates resent), %d other; lost: %d %v\n",
		m, g.connects, g.hellos, g.read, g.dups, g.other, lost, g.lost)
	if have+lost != want {
		fmt.Fprintf(w, "FAIL: %d made, %d read back + %d counted lost = %d: %d unaccounted\n", want, have, lost, have+lost, int64(want)-int64(have+lost))
		ok = false
	} else {
		fmt.Fprintf(w, "ok: every connect and hello read back or counted lost\n")
	}
	return ok
}

func mean(xs []float64) float64 {
	var s float64
	for _, x := range xs {
		s += x
	}
	return s / float64(len(xs))
}
