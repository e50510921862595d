// Package deploy holds no code: its tests check the deployment files beside
// it. The manifests in kubernetes/ must decode strictly into the Kubernetes
// API types, the CallScope CRD's schema must accept exactly the policies the
// agent accepts, the capabilities the DaemonSet grants must each be needed
// (the agent is started with each one removed), and the systemd unit in
// vagrant/ must run the agent and see a call.
package deploy
