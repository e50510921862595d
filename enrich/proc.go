package enrich

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/internal/gencache"
)

// userHZ is the unit of /proc/<pid>/stat's start time: USER_HZ, 100 on
// every Linux architecture callscope runs on.
const userHZ = 100

type procKey struct {
	pid   uint32
	start uint64 // clock ticks since boot, as /proc/<pid>/stat says
}

// keyOf keys a process by the start time the kernel reports, in
// nanoseconds since boot, brought to /proc's unit.
func keyOf(pid uint32, startNS uint64) procKey {
	return procKey{pid, startNS / (1e9 / userHZ)}
}

// procCache maps (pid, start time) to what /proc said. Keying by start time
// means a reused PID is a different key, never a stale hit.
type procCache struct {
	root    string
	entries *gencache.Cache[procKey, *cachedProcess]
	// execs keeps what execve told of recent processes, for one that is
	// gone before its /proc could be read: a short-lived caller such as
	// curl in a CI job would otherwise go without exe or identity.
	execs *gencache.Cache[procKey, *collector.Exec]
	// last is what the previous get returned: a caller's events come in
	// runs, and comparing its key costs less than hashing it. Such a run
	// adds no entry, so the cache ages the process no sooner than if each
	// of its events had looked it up.
	last    procKey
	lastP   *cachedProcess
	hasLast bool
}

func newProcCache(root string, size int) *procCache {
	return &procCache{
		root:    root,
		entries: gencache.New[procKey, *cachedProcess](size),
		execs:   gencache.New[procKey, *collector.Exec](size),
	}
}

// execed remembers an execve, until the process is read or exits.
// The process's cached facts go: execve keeps the pid and start time but
// changes the program, and so the identity.
func (c *procCache) execed(pid uint32, startNS uint64, x *collector.Exec) {
	k := keyOf(pid, startNS)
	c.entries.Delete(k)
	c.drop(k)
	if x != nil {
		c.execs.Put(k, x)
	}
}

// get returns the process, or nil when it is gone. hit says whether /proc
// was spared. A process found gone is remembered as gone: it cannot return.
func (c *procCache) get(pid uint32, startNS uint64, uid uint32) (p *cachedProcess, hit bool) {
	k := keyOf(pid, startNS)
	if c.hasLast && c.last == k {
		return c.lastP, true
	}
	if p, ok := c.entries.Get(k); ok {
		c.last, c.lastP, c.hasLast = k, p, true
		return p, true
	}
	p, err := readProcess(c.root, k)
	if err != nil {
		p = nil
	}
	// A process gone, or a zombie whose exe and cmdline are already
	// unreadable, keeps what its execve told. One caught exiting has its
	// exe still, but its cmdline empty once its memory is gone: it keeps
	// execve's arguments (only kernel threads, which make no calls, have
	// an empty cmdline while they live).
	if x, ok := c.execs.Get(k); ok {
		switch {
		case p == nil || p.Exe == "":
			ppid := x.PPID
			if p != nil && p.PPID != 0 {
				ppid = p.PPID
			}
			p = &cachedProcess{Process: Process{Exe: x.Path, Cmdline: x.Args, PPID: ppid}}
		case len(p.Cmdline) == 0:
			p.Cmdline = x.Args
		}
	}
	if p != nil && p.Exe != "" {
		p.uid, p.id = uid, exeIdentity(p.Exe, uid)
	}
	c.execs.Delete(k)
	c.entries.Put(k, p)
	c.last, c.lastP, c.hasLast = k, p, true
	return p, false
}

// forget drops a process that exited: its facts are of no further use, and
// its PID may soon name another.
func (c *procCache) forget(pid uint32, startNS uint64) {
	k := keyOf(pid, startNS)
	c.entries.Delete(k)
	c.execs.Delete(k)
	c.drop(k)
}

// drop forgets the remembered get of k.
func (c *procCache) drop(k procKey) {
	if c.hasLast && c.last == k {
		c.hasLast, c.lastP = false, nil
	}
}

var errGone = errors.New("process gone")

// readProcess reads /proc/<pid> and checks, before and after, that the PID
// still names the process that started at k.start.
func readProcess(root string, k procKey) (*cachedProcess, error) {
	dir := root + "/" + strconv.FormatUint(uint64(k.pid), 10)
	ppid, err := checkStart(dir, k.start)
	if err != nil {
		return nil, err
	}
	p := &cachedProcess{Process: Process{PPID: ppid}}
	if exe, err := os.Readlink(dir + "/exe"); err == nil {
		p.Exe = exe
	}
	if b, err := os.ReadFile(dir + "/cmdline"); err == nil {
		p.Cmdline = splitCmdline(b)
	}
	if _, err := checkStart(dir, k.start); err != nil {
		return nil, err // reused while we read: what we read may be another's
	}
	return p, nil
}

// checkStart reads the parent PID and start time from /proc/<pid>/stat and
// fails unless the start time matches.
func checkStart(dir string, start uint64) (ppid uint32, err error) {
	b, err := os.ReadFile(dir + "/stat")
	if err != nil {
		return 0, errGone
	}
	ppid, got, err := parseStat(b)
	if err != nil {
		return 0, err
	}
	if got != start {
		return 0, errGone
	}
	return ppid, nil
}

// parseStat returns fields 4 (ppid) and 22 (starttime) of /proc/<pid>/stat.
// The command name (field 2) may hold spaces and parentheses, so fields are
// counted from the last ')'.
func parseStat(b []byte) (ppid uint32, start uint64, err error) {
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("stat: no command name")
	}
	fields := bytes.Fields(b[i+1:])
	// fields[0] is field 3 (state).
	if len(fields) < 20 {
		return 0, 0, fmt.Errorf("stat: %d fields after the command name", len(fields))
	}
	pp, err := strconv.ParseUint(string(fields[1]), 10, 32)
	if err != nil {
		return 0, 0, fmt.Errorf("stat: ppid: %w", err)
	}
	st, err := strconv.ParseUint(string(fields[19]), 10, 64)
	if err != nil {
		return 0, 0, fmt.Errorf("stat: starttime: %w", err)
	}
	return uint32(pp), st, nil
}

// splitCmdline splits the NUL-separated argument list.
func splitCmdline(b []byte) []string {
	b = bytes.TrimRight(b, "\x00")
	if len(b) == 0 {
		return nil
	}
	parts := bytes.Split(b, []byte{0})
	args := make([]string, len(parts))
	for i, p := range parts {
		args[i] = string(p)
	}
	return args
}
