package kubetest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/callscope/callscope/internal/gobin"
)

// APIServerEnv names a kube-apiserver binary to use instead of
// bin/kube-apiserver.
const APIServerEnv = "CALLSCOPE_KUBE_APISERVER"

// apiserverLdflags are the Makefile's: the binary reports the version of
// the k8s.io/kubernetes module it is built from.
const apiserverLdflags = "-s -w -X k8s.io/component-base/version.gitVersion=v1.34.4" +
	" -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34"

// apiserverBinary finds kube-apiserver, building bin/kube-apiserver when
// it is missing.
func apiserverBinary(logf func(string, ...any)) (string, error) {
	if p := os.Getenv(APIServerEnv); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", &MissingError{What: fmt.Sprintf("%s=%s: %v", APIServerEnv, p, err)}
		}
		return p, nil
	}
	root, err := repoRoot()
	if err != nil {
		return "", &MissingError{What: fmt.Sprintf("no %s, and %v", APIServerEnv, err)}
	}
	bin := filepath.Join(root, "bin", "kube-apiserver")
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := buildAPIServer(root, bin, logf); err != nil {
		return "", &MissingError{What: fmt.Sprintf("no %s and no %s, and building it failed (run `make kube-apiserver`): %v", APIServerEnv, bin, err)}
	}
	return bin, nil
}

// buildAPIServer builds the module in internal/kubetest/apiserver, as
// `make kube-apiserver` does. Test binaries of several packages may get
// here at once: a lock on bin/ lets one build while the others wait.
func buildAPIServer(root, bin string, logf func(string, ...any)) error {
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return err
	}
	lock, err := os.OpenFile(bin+".lock", os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return err
	}
	defer lock.Close()
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX); err != nil {
		return fmt.Errorf("lock %s: %w", lock.Name(), err)
	}
	defer syscall.Flock(int(lock.Fd()), syscall.LOCK_UN)
	if _, err := os.Stat(bin); err == nil {
		return nil // built while this one waited
	}

	goBin := gobin.Path()
	logf("kubetest: building %s (minutes without a warm Go build cache)", bin)
	begin := time.Now()
	tmp := bin + ".tmp"
	cmd := exec.Command(goBin, "build", "-trimpath", "-ldflags", apiserverLdflags, "-o", tmp, ".")
	cmd.Dir = filepath.Join(root, "internal", "kubetest", "apiserver")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("go build: %v\n%s", err, tail(out, 2000))
	}
	logf("kubetest: built %s in %v", bin, time.Since(begin).Round(time.Second))
	return os.Rename(tmp, bin)
}

// repoRoot is the directory of callscope's go.mod, above the working
// directory a test runs in.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && bytes.HasPrefix(b, []byte("module github.com/callscope/callscope\n")) {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("the working directory is not inside the callscope repository, whose bin/kube-apiserver is the default")
		}
		dir = parent
	}
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}
