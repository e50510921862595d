// Samples of the agent: RSS, goroutines, fds and BPF maps.

package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// sample is one reading of the agent.
type sample struct {
	at                      time.Duration
	rssKiB                  float64
	goroutines, fds         float64
	maps, mapMemlockKiB     float64
	spoolEvents, deliveries float64
}

type sampler struct {
	pid     int
	metrics string
	rows    []sample
}

func (s *sampler) take(at time.Duration) error {
	m, err := scrape(s.metrics)
	if err != nil {
		return fmt.Errorf("scrape: %w", err)
	}
	rss, err := statusKiB(s.pid, "VmRSS:")
	if err != nil {
		return err
	}
	fds, maps, memlock, err := fdsAndMaps(s.pid)
	if err != nil {
		return err
	}
	s.rows = append(s.rows, sample{
		at: at, rssKiB: rss, goroutines: m["go_goroutines"], fds: fds, maps: maps, mapMemlockKiB: memlock / 1024,
		spoolEvents: m["callscope_spool_events"], deliveries: m[`callscope_kafka_messages_delivered_total{topic="events"}`],
	})
	return nil
}

func (s *sampler) write(path string) {
	var b strings.Builder
	b.WriteString("seconds\trss_kib\tgoroutines\tfds\tbpf_maps\tbpf_memlock_kib\tspool_events\tdelivered\n")
	for _, r := range s.rows {
		fmt.Fprintf(&b, "%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\t%.0f\n", r.at.Seconds(), r.rssKiB, r.goroutines, r.fds,
			r.maps, r.mapMemlockKiB, r.spoolEvents, r.deliveries)
	}
	os.WriteFile(path, []byte(b.String()), 0o644)
}

func statusKiB(pid int, key string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, key); ok {
			return strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 64)
		}
	}
	return 0, fmt.Errorf("no %s in /proc/%d/status", key, pid)
}

// fdsAndMaps counts the agent's open fds, the BPF maps among them, and
// their memlock in bytes, from /proc/PID/fdinfo.
func fdsAndMaps(pid int) (fds, maps, memlock float64, err error) {
	dir := fmt.Sprintf("/proc/%d/fdinfo", pid)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return 0, 0, 0, err
	}
	seen := map[string]bool{}
	for _, e := range ents {
		fds++
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue // closed meanwhile
		}
		var id string
		var lock float64
		for _, line := range strings.Split(string(b), "\n") {
			if v, ok := strings.CutPrefix(line, "map_id:"); ok {
				id = strings.TrimSpace(v)
			}
			if v, ok := strings.CutPrefix(line, "memlock:"); ok {
				lock, _ = strconv.ParseFloat(strings.TrimSpace(v), 64)
			}
		}
		if id != "" && !seen[id] {
			seen[id] = true
			maps++
			memlock += lock
		}
	}
	return fds, maps, memlock, nil
}
