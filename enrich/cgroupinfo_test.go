package enrich

import (
	"bufio"
	"os"
	"strings"
	"testing"
)

// TestParseCgroupPath runs the real-world path shapes in testdata.
func TestParseCgroupPath(t *testing.T) {
	f, err := os.Open("testdata/cgroup-paths.tsv")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	n := 0
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "#") || line == "" {
			continue
		}
		col := strings.Split(line, "\t")
		if len(col) != 6 {
			t.Fatalf("testdata line %q: want 6 tab-separated columns", line)
		}
		want := CgroupInfo{ContainerID: col[1], Runtime: col[2], PodUID: col[3], Unit: col[4], Session: col[5] == "session"}
		if got := ParseCgroupPath(col[0]); got != want {
			t.Errorf("%s\n got %+v\nwant %+v", col[0], got, want)
		}
		n++
	}
	if n < 30 {
		t.Fatalf("only %d paths in testdata", n)
	}
}

func TestParseCgroupPathAllocs(t *testing.T) {
	p := "/kubepods/burstable/pod1b6a1c4e-2f3d-4e5a-8b7c-9d0e1f2a3b4c/3f1e6a0c8b7d4e2f9a1b0c3d5e7f9a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f"
	if n := testing.AllocsPerRun(100, func() { ParseCgroupPath(p) }); n != 0 {
		t.Errorf("%v allocations", n)
	}
}

// FuzzParseCgroupPath: any path gives a consistent answer, never a panic.
func FuzzParseCgroupPath(f *testing.F) {
	if b, err := os.ReadFile("testdata/cgroup-paths.tsv"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if p, _, ok := strings.Cut(line, "\t"); ok && !strings.HasPrefix(p, "#") {
				f.Add(p)
			}
		}
	}
	f.Fuzz(func(t *testing.T, path string) {
		info := ParseCgroupPath(path)
		if info.ContainerID != "" && !isContainerID(info.ContainerID) {
			t.Fatalf("container id %q", info.ContainerID)
		}
		if info.ContainerID == "" && info.Runtime != "" {
			t.Fatalf("runtime %q without a container", info.Runtime)
		}
		if info.PodUID != "" && !isUID(info.PodUID, '-') {
			t.Fatalf("pod uid %q", info.PodUID)
		}
		if info.Session && info.ContainerID != "" {
			t.Fatal("a session with a container")
		}
		if info.Unit != "" && (!strings.HasSuffix(info.Unit, ".service") || strings.Contains(info.Unit, "/")) {
			t.Fatalf("unit %q", info.Unit)
		}
		if info.ContainerID != "" && !strings.Contains(path, info.ContainerID) {
			t.Fatalf("container id %q not in the path", info.ContainerID)
		}
	})
}

func BenchmarkParseCgroupPath(b *testing.B) {
	p := "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b6a1c4e_2f3d_4e5a_8b7c_9d0e1f2a3b4c.slice/cri-containerd-3f1e6a0c8b7d4e2f9a1b0c3d5e7f9a2b4c6d8e0f1a3b5c7d9e1f2a4b6c8d0e2f.scope"
	b.ReportAllocs()
	for b.Loop() {
		ParseCgroupPath(p)
	}
}
