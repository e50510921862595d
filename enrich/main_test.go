package enrich

import (
	"os"
	"testing"

	"github.com/callscope/callscope/internal/kubetest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	kubetest.Stop()
	os.Exit(code)
}
