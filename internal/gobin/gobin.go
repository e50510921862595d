// Package gobin finds the go command for tests that build binaries: under
// sudo, PATH may not hold it.
package gobin

import (
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
)

// Path returns the go command: the one on PATH, else GOROOT's, else that
// of the toolchain that built the running binary.
func Path() string {
	if p, err := exec.LookPath("go"); err == nil {
		return p
	}
	if root := os.Getenv("GOROOT"); root != "" {
		return filepath.Join(root, "bin", "go")
	}
	//lint:ignore SA1019 the toolchain that built this test, on this machine, is what is wanted
	return filepath.Join(runtime.GOROOT(), "bin", "go")
}
