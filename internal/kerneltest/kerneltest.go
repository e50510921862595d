// Package kerneltest helps tests that load the real BPF programs and make
// real connections from real processes in real cgroups.
//
// Such a test calls Require first. Where the kernel or privilege is missing
// it skips with the reason, unless CALLSCOPE_REQUIRE_KERNEL=1 is set (as in
// CI), where a skip would hide a regression and so fails instead.
package kerneltest

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/callscope/callscope/collector"
)

// Require skips or fails t when this machine cannot run kernel tests.
func Require(t testing.TB) {
	t.Helper()
	var reason string
	switch {
	case os.Geteuid() != 0:
		reason = "kernel tests need root"
	default:
		if err := collector.CheckSystem(""); err != nil {
			reason = err.Error()
		}
	}
	if reason == "" {
		return
	}
	if os.Getenv("CALLSCOPE_REQUIRE_KERNEL") == "1" {
		t.Fatalf("CALLSCOPE_REQUIRE_KERNEL=1 but this machine cannot run kernel tests: %s", reason)
	}
	t.Skipf("skipping kernel test: %s (set CALLSCOPE_REQUIRE_KERNEL=1 to make this a failure)", reason)
}

// Cgroup is a cgroup the test made under the cgroup2 root.
type Cgroup struct {
	Path string // absolute
	Rel  string // relative to the cgroup2 root, as events report it
	ID   uint64 // the cgroup id: the directory's inode
	Dir  *os.File
}

// NewCgroup makes a cgroup below the cgroup2 root; rel may hold several
// levels (a/b/c). It is removed when the test ends.
func NewCgroup(t testing.TB, rel string) *Cgroup {
	t.Helper()
	root, err := collector.Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	top := fmt.Sprintf("callscope-test-%d-%d", os.Getpid(), rand.Uint32())
	path := filepath.Join(root, top, rel)
	if err := os.MkdirAll(path, 0o755); err != nil {
		t.Fatalf("make cgroup: %v", err)
	}
	t.Cleanup(func() { removeCgroupTree(t, filepath.Join(root, top)) })
	dir, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dir.Close() })
	var st syscall.Stat_t
	if err := syscall.Fstat(int(dir.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return &Cgroup{Path: path, Rel: "/" + filepath.Join(top, rel), ID: st.Ino, Dir: dir}
}

// removeCgroupTree removes cgroup directories deepest first, waiting a
// little for exited processes to leave them.
func removeCgroupTree(t testing.TB, top string) {
	var dirs []string
	filepath.WalkDir(top, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		var err error
		for try := 0; try < 50; try++ {
			if err = os.Remove(dirs[i]); err == nil || os.IsNotExist(err) {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err != nil && !os.IsNotExist(err) {
			t.Logf("remove cgroup %s: %v", dirs[i], err)
		}
	}
}

// Run runs a command and fails the test, with its output, if it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(bytes.TrimSpace(out))
}

// Release returns the running kernel's release, as uname -r prints it.
func Release(t testing.TB) string {
	t.Helper()
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		t.Fatal(err)
	}
	return unix.ByteSliceToString(u.Release[:])
}
