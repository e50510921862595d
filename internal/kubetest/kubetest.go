// Package kubetest runs a real Kubernetes control plane for tests: etcd and
// kube-apiserver, and nothing else. Objects are stored, served, watched and
// authorised exactly as in a cluster; no scheduler, controller or kubelet
// acts on them.
//
// A test calls Get, which starts the control plane on first use and shares
// it with every later test of the same binary; the package's TestMain calls
// Stop after m.Run. Where etcd or kube-apiserver is missing, Get skips the
// test with the reason, unless CALLSCOPE_REQUIRE_KUBE=1 is set (as in CI),
// where a skip would hide a regression and so fails instead.
//
// etcd comes from the system (Debian's etcd-server). kube-apiserver is
// $CALLSCOPE_KUBE_APISERVER, else bin/kube-apiserver at the repository's
// root, which `make kube-apiserver` builds from the module in apiserver/;
// when it is missing, Get builds it there (minutes without a warm Go build
// cache).
package kubetest

import (
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
)

// RequireEnv names the variable that turns a missing control plane from a
// skip into a failure.
const RequireEnv = "CALLSCOPE_REQUIRE_KUBE"

var (
	sharedOnce sync.Once
	shared     *ControlPlane
	sharedErr  error
)

// Get returns this test binary's control plane, starting it on first use.
// It skips t (or fails it, under CALLSCOPE_REQUIRE_KUBE=1) where the
// control plane cannot run here, and fails t where it should but did not
// start.
func Get(t testing.TB) *ControlPlane {
	t.Helper()
	sharedOnce.Do(func() {
		shared, sharedErr = Start(Options{Logf: t.Logf})
		if sharedErr == nil {
			t.Logf("kubetest: control plane at %s ready in %v", shared.URL, shared.StartupTime.Round(1e6))
		}
	})
	if sharedErr != nil {
		var missing *MissingError
		switch {
		case !errors.As(sharedErr, &missing):
			t.Fatalf("kubetest: %v", sharedErr)
		case os.Getenv(RequireEnv) == "1":
			t.Fatalf("%s=1 but the control plane cannot run here: %v", RequireEnv, sharedErr)
		default:
			t.Skipf("skipping: %v (set %s=1 to make this a failure)", sharedErr, RequireEnv)
		}
	}
	return shared
}

// Stop stops the control plane Get started, if any. Call it from TestMain
// after m.Run.
func Stop() {
	if shared != nil {
		if err := shared.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "kubetest:", err)
		}
	}
}

// MissingError says what this machine lacks to run a control plane.
type MissingError struct{ What string }

func (e *MissingError) Error() string { return e.What }
