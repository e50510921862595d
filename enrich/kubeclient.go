package enrich

import (
	"fmt"
	"os"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// KubeClient returns a client from the kubeconfig file when path is not
// empty, else from the in-cluster config when running in a pod
// (KUBERNETES_SERVICE_HOST set). ok is false, with a nil error, when
// neither applies: Kubernetes enrichment is then off.
func KubeClient(kubeconfigPath string) (client kubernetes.Interface, ok bool, err error) {
	var cfg *rest.Config
	switch {
	case kubeconfigPath != "":
		cfg, err = clientcmd.BuildConfigFromFlags("", kubeconfigPath)
		if err != nil {
			return nil, false, fmt.Errorf("kubeconfig %s: %w", kubeconfigPath, err)
		}
	case os.Getenv("KUBERNETES_SERVICE_HOST") != "":
		cfg, err = rest.InClusterConfig()
		if err != nil {
			return nil, false, fmt.Errorf("in-cluster kubernetes config: %w", err)
		}
	default:
		return nil, false, nil
	}
	cfg.UserAgent = "callscope"
	// Protobuf costs the API server and the agent less than JSON on pod
	// lists; JSON stays acceptable for servers that lack it.
	cfg.ContentType = "application/vnd.kubernetes.protobuf"
	cfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, false, fmt.Errorf("kubernetes client: %w", err)
	}
	return c, true, nil
}
