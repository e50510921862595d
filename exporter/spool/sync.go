// The syncer: fsyncs the segments, the directory and the cursor while
// delivery lags. It takes s.mu to list what to sync and to record what
// was, never while it waits for the disk.

package spool

import (
	"errors"
	"os"
	"path/filepath"
	"time"
)

// syncer fsyncs the segments while delivery lags (see the package doc).
func (s *Spool) syncer(every time.Duration) {
	defer close(s.syncerDone)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
		}
		s.mu.Lock()
		lagging := s.acked < s.lagMark
		s.lagMark = s.next
		s.mu.Unlock()
		if lagging {
			s.sync()
		}
	}
}

// sync makes the segments, their directory entries and the cursor durable.
func (s *Spool) sync() {
	type job struct {
		g    *segment
		f    *os.File
		size int64
	}
	var jobs []job
	s.mu.Lock()
	for _, g := range s.segs {
		if g.synced < g.size && g.end() > s.acked {
			jobs = append(jobs, job{g, g.w, g.size})
		}
	}
	dirDirty := s.dirDirty
	s.dirDirty = false
	s.mu.Unlock()

	for _, j := range jobs {
		var err error
		if j.f != nil {
			// Sync, not the raw fd: Append may close the file meanwhile.
			err = j.f.Sync()
		} else {
			err = syncPath(j.g.path)
		}
		if err != nil {
			if !errors.Is(err, os.ErrNotExist) && !errors.Is(err, os.ErrClosed) {
				s.log.Warn("fsync spool segment", "file", filepath.Base(j.g.path), "error", err)
			}
			continue
		}
		s.mu.Lock()
		j.g.synced = max(j.g.synced, j.size)
		s.mu.Unlock()
	}
	if dirDirty {
		if err := syncPath(s.dir); err != nil {
			s.log.Warn("fsync spool directory", "error", err)
		}
	}
	if err := s.cursor.Sync(); err != nil {
		s.log.Warn("fsync spool cursor", "error", err)
	}
}

// syncPath fsyncs a file by name: fsync flushes the file, not the
// descriptor, so a new one does.
func syncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	return f.Sync()
}
