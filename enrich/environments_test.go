package enrich

import (
	"context"
	"log/slog"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/callscope/callscope/internal/kubetest"
)

// TestEnvironments watches real namespaces: labelled, relabelled,
// unlabelled and deleted.
func TestEnvironments(t *testing.T) {
	cp := kubetest.Get(t)
	client := cp.Client(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	nss := client.CoreV1().Namespaces()
	create := func(name string, labels map[string]string) {
		t.Helper()
		if _, err := nss.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { nss.Delete(context.Background(), name, metav1.DeleteOptions{}) })
	}
	create("env-prod", map[string]string{"environment": "prod", "team": "a"})
	create("env-none", map[string]string{"team": "b"})

	envs := NewEnvironments(client, "environment", slog.New(slog.DiscardHandler))
	if err := envs.Start(ctx, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if v, ok := envs.Of("env-prod"); !ok || v != "prod" {
		t.Errorf("env-prod: %q %v, want prod", v, ok)
	}
	if v, ok := envs.Of("env-none"); ok {
		t.Errorf("env-none: %q, want no environment", v)
	}
	if _, ok := envs.Of("never-made"); ok {
		t.Error("a namespace that does not exist has an environment")
	}

	create("env-dev", map[string]string{"environment": "dev"})
	waitUntil(t, "env-dev known", func() bool { v, _ := envs.Of("env-dev"); return v == "dev" })
	ns, err := nss.Get(ctx, "env-prod", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	ns.Labels["environment"] = "staging"
	if _, err := nss.Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "env-prod relabelled", func() bool { v, _ := envs.Of("env-prod"); return v == "staging" })
	if ns, err = nss.Get(ctx, "env-prod", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	delete(ns.Labels, "environment")
	if _, err := nss.Update(ctx, ns, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	waitUntil(t, "env-prod unlabelled", func() bool { _, ok := envs.Of("env-prod"); return !ok })
	if allocs := testing.AllocsPerRun(100, func() { envs.Of("env-dev") }); allocs != 0 {
		t.Errorf("Of allocates %v times", allocs)
	}
}

func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
