package enrich

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/callscope/callscope/internal/gencache"
)

// fileidKernfs is the file handle type of kernfs (cgroupfs): the handle is
// the node's 64-bit id, which is the cgroup id the kernel reports.
const fileidKernfs = 0xfe

// cgroupResolver maps cgroup ids to paths relative to the cgroup2 root.
// Cgroup ids are never reused, so a cached path is never stale. It opens
// the cgroup by handle (needs CAP_DAC_READ_SEARCH); without that it walks
// the tree, at most once a second.
type cgroupResolver struct {
	root    string
	mount   *os.File
	entries *gencache.Cache[uint64, *cgroupEntry]
	log     *slog.Logger

	byHandle bool
	lastWalk time.Time
}

func newCgroupResolver(root string, size int, log *slog.Logger) (*cgroupResolver, error) {
	if root == "" {
		return nil, errors.New("cgroup root not set")
	}
	f, err := os.Open(root)
	if err != nil {
		return nil, fmt.Errorf("open cgroup root: %w", err)
	}
	return &cgroupResolver{
		root: filepath.Clean(root), mount: f, log: log, byHandle: true,
		entries: gencache.New[uint64, *cgroupEntry](size),
	}, nil
}

func (r *cgroupResolver) close() error { return r.mount.Close() }

// cgroupEntry is a resolved cgroup: its path, what the path says, and the
// identity of a systemd unit, built once.
type cgroupEntry struct {
	path   string // "" when the cgroup is gone
	info   CgroupInfo
	unitID string
}

var goneCgroup = &cgroupEntry{}

// entry returns what is known of the cgroup. hit says whether the cache
// answered; an entry with an empty path is a cgroup that no longer exists.
func (r *cgroupResolver) entry(id uint64) (e *cgroupEntry, hit bool) {
	if e, found := r.entries.Get(id); found {
		return e, true
	}
	p, known := r.resolve(id)
	e = goneCgroup
	if p != "" {
		e = newCgroupEntry(p)
	}
	if known {
		r.entries.Put(id, e)
	}
	return e, false
}

func newCgroupEntry(p string) *cgroupEntry {
	e := &cgroupEntry{path: p, info: ParseCgroupPath(p)}
	if e.info.Unit != "" {
		e.unitID = "unit:" + e.info.Unit
	}
	return e
}

// resolve finds the path of a cgroup; "" when it is gone. known is false
// when the answer is only for now (a walk was not due yet) and must not be
// cached.
func (r *cgroupResolver) resolve(id uint64) (p string, known bool) {
	if r.byHandle {
		p, err := r.openByID(id)
		if err == nil {
			return p, true
		}
		if errors.Is(err, unix.ESTALE) || errors.Is(err, unix.ENOENT) {
			return "", true // removed
		}
		r.log.Warn("cannot open cgroups by id; resolving paths by walking the cgroup tree instead",
			"error", err, "hint", "grant CAP_DAC_READ_SEARCH")
		r.byHandle = false
	}
	if time.Since(r.lastWalk) < time.Second {
		return "", false
	}
	r.lastWalk = time.Now()
	p, err := r.walk(id)
	if err != nil {
		r.log.Warn("walk cgroup tree", "error", err)
		return "", false
	}
	// The event's cgroup existed when it connected: not found now, it is gone.
	return p, true
}

func (r *cgroupResolver) openByID(id uint64) (string, error) {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], id)
	fd, err := unix.OpenByHandleAt(int(r.mount.Fd()), unix.NewFileHandle(fileidKernfs, b[:]), unix.O_RDONLY|unix.O_PATH|unix.O_CLOEXEC)
	if err != nil {
		return "", fmt.Errorf("open cgroup %d by handle: %w", id, err)
	}
	defer unix.Close(fd)
	abs, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return "", fmt.Errorf("cgroup %d path: %w", id, err)
	}
	return r.relative(abs)
}

func (r *cgroupResolver) relative(abs string) (string, error) {
	if abs == r.root {
		return "/", nil
	}
	rel, ok := strings.CutPrefix(abs, r.root+"/")
	if !ok {
		return "", fmt.Errorf("cgroup path %q is outside the cgroup root %q", abs, r.root)
	}
	return "/" + rel, nil
}

// walk looks through the whole tree for the directory whose inode is id,
// caching every path it passes, so one walk answers many misses.
func (r *cgroupResolver) walk(id uint64) (string, error) {
	found := ""
	err := filepath.WalkDir(r.root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil // removed while walking
		}
		if !d.IsDir() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		st, ok := info.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		rel, err := r.relative(p)
		if err != nil {
			return nil
		}
		if _, known := r.entries.Get(st.Ino); !known {
			r.entries.Put(st.Ino, newCgroupEntry(rel))
		}
		if st.Ino == id {
			found = rel
		}
		return nil
	})
	return found, err
}
