package main

import (
	"context"
	"log/slog"
	"time"

	"k8s.io/client-go/kubernetes"

	"github.com/callscope/callscope/enrich"
)

// calleeSyncTimeout bounds the wait at start for the cluster's Services,
// EndpointSlices and pods, counted from when Kubernetes began to be read:
// a large cluster takes a while to list.
const calleeSyncTimeout = 30 * time.Second

// startCalleeIndex follows the cluster's Services, EndpointSlices and pods
// to name the destinations of calls. As with the pod index, an API server
// that cannot be reached or that refuses the agent leaves callees unnamed
// (counted), but capture goes on: the error is logged, and the informers
// keep trying.
func startCalleeIndex(ctx context.Context, client kubernetes.Interface, trustDomain string, wait time.Duration, log *slog.Logger) *enrich.CalleeIndex {
	callees := enrich.NewCalleeIndex(client, trustDomain, log)
	if err := callees.Start(ctx, wait); err != nil {
		log.Error("kubernetes callees unavailable for now; events do not name the Services and pods they call until they are", "error", err)
	}
	return callees
}
