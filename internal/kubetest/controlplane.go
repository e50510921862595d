package kubetest

import (
	"bytes"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"k8s.io/client-go/rest"
)

// Options tune Start.
type Options struct {
	// Logf, when set, is told what Start does that takes time.
	Logf func(format string, args ...any)
	// StartTimeout bounds the wait for etcd and the API server to be ready;
	// default one minute.
	StartTimeout time.Duration
}

// ControlPlane is a running etcd and kube-apiserver.
type ControlPlane struct {
	// URL is the API server's address, https://127.0.0.1:<port>.
	URL string
	// CAData is the PEM of the API server's self-signed serving
	// certificate and its CA.
	CAData []byte
	// AdminToken authenticates as "admin" in group system:masters.
	AdminToken string
	// Config is a client configuration for the admin.
	Config *rest.Config
	// StartupTime is how long etcd and the API server took to be ready.
	StartupTime time.Duration

	dir       string
	launcher  *launcher
	etcd      *process
	apiserver *process
	stopOnce  sync.Once
	stopErr   error
}

// ServiceCIDR is the Service IP range the API server allocates from.
const ServiceCIDR = "10.96.0.0/16"

// ServiceAccountIssuer is the issuer of the service account tokens.
const ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"

// Start starts etcd, then kube-apiserver against it, and waits for the API
// server's /readyz. Its error is a *MissingError where this machine lacks
// etcd or the API server binary.
func Start(opts Options) (*ControlPlane, error) {
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.StartTimeout == 0 {
		opts.StartTimeout = time.Minute
	}
	etcdBin, err := exec.LookPath("etcd")
	if err != nil {
		return nil, &MissingError{What: "etcd is not installed (Debian: apt-get install etcd-server)"}
	}
	apiserverBin, err := apiserverBinary(opts.Logf)
	if err != nil {
		return nil, err
	}

	dir, err := os.MkdirTemp("", "callscope-kubetest-")
	if err != nil {
		return nil, err
	}
	cp := &ControlPlane{dir: dir, launcher: newLauncher()}
	begin := time.Now()
	deadline := begin.Add(opts.StartTimeout)
	etcdURL, err := cp.startEtcd(etcdBin, deadline)
	if err == nil {
		err = cp.startAPIServer(apiserverBin, etcdURL, deadline)
	}
	if err != nil {
		cp.Stop()
		return nil, err
	}
	cp.StartupTime = time.Since(begin)
	return cp, nil
}

func (cp *ControlPlane) startEtcd(bin string, deadline time.Time) (string, error) {
	ports, err := freePorts(2)
	if err != nil {
		return "", err
	}
	client := "http://127.0.0.1:" + strconv.Itoa(ports[0])
	peer := "http://127.0.0.1:" + strconv.Itoa(ports[1])
	cp.etcd, err = cp.launcher.start("etcd", filepath.Join(cp.dir, "etcd.log"), bin,
		"--name=kubetest",
		"--data-dir="+filepath.Join(cp.dir, "etcd"),
		"--listen-client-urls="+client,
		"--advertise-client-urls="+client,
		"--listen-peer-urls="+peer,
		"--initial-advertise-peer-urls="+peer,
		"--initial-cluster=kubetest="+peer,
		"--logger=zap",
		"--log-level=warn",
	)
	if err != nil {
		return "", err
	}
	err = waitFor(deadline, cp.etcd, func() error {
		resp, err := http.Get(client + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("/health: %s", resp.Status)
		}
		return nil
	})
	if err != nil {
		return "", fmt.Errorf("etcd not healthy: %w\n%s", err, cp.etcd.logTail())
	}
	return client, nil
}

func (cp *ControlPlane) startAPIServer(bin, etcdURL string, deadline time.Time) error {
	saKey, err := writeServiceAccountKey(filepath.Join(cp.dir, "sa.key"))
	if err != nil {
		return err
	}
	cp.AdminToken, err = randomToken()
	if err != nil {
		return err
	}
	tokens := filepath.Join(cp.dir, "tokens.csv")
	if err := os.WriteFile(tokens, []byte(cp.AdminToken+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		return err
	}
	ports, err := freePorts(1)
	if err != nil {
		return err
	}
	certDir := filepath.Join(cp.dir, "certs")
	cp.URL = "https://127.0.0.1:" + strconv.Itoa(ports[0])
	cp.apiserver, err = cp.launcher.start("kube-apiserver", filepath.Join(cp.dir, "kube-apiserver.log"), bin,
		"--etcd-servers="+etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port="+strconv.Itoa(ports[0]),
		"--cert-dir="+certDir,
		"--service-account-issuer="+ServiceAccountIssuer,
		"--service-account-key-file="+saKey,
		"--service-account-signing-key-file="+saKey,
		"--token-auth-file="+tokens,
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range="+ServiceCIDR,
		"--v=0",
	)
	if err != nil {
		return err
	}

	// The server writes its self-signed certificate before it listens.
	err = waitFor(deadline, cp.apiserver, func() error {
		ca, err := os.ReadFile(filepath.Join(certDir, "apiserver.crt"))
		if err != nil {
			return err
		}
		cp.CAData = ca
		return cp.ready()
	})
	if err != nil {
		return fmt.Errorf("kube-apiserver not ready: %w\n%s", err, cp.apiserver.logTail())
	}
	cp.Config = cp.ConfigFor(cp.AdminToken)
	return nil
}

// ready asks /readyz, which answers 200 once the API server's post-start
// hooks (RBAC's bootstrap roles among them) have run.
func (cp *ControlPlane) ready() error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(cp.CAData) {
		return errors.New("apiserver.crt holds no certificate yet")
	}
	client := &http.Client{
		Timeout:   5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
	}
	defer client.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, cp.URL+"/readyz", nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+cp.AdminToken)
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("/readyz: %s", resp.Status)
	}
	return nil
}

// ConfigFor is a client configuration that authenticates with token.
func (cp *ControlPlane) ConfigFor(token string) *rest.Config {
	return &rest.Config{
		Host:            cp.URL,
		BearerToken:     token,
		TLSClientConfig: rest.TLSClientConfig{CAData: bytes.Clone(cp.CAData)},
		QPS:             100,
		Burst:           200,
	}
}

// Stop stops the API server, then etcd, and removes their files.
func (cp *ControlPlane) Stop() error {
	cp.stopOnce.Do(func() {
		var errs []error
		for _, p := range []*process{cp.apiserver, cp.etcd} {
			if p != nil {
				errs = append(errs, p.stop(10*time.Second))
			}
		}
		cp.launcher.close()
		errs = append(errs, os.RemoveAll(cp.dir))
		cp.stopErr = errors.Join(errs...)
	})
	return cp.stopErr
}

// waitFor polls check until it passes, p exits or the deadline passes.
func waitFor(deadline time.Time, p *process, check func() error) error {
	for {
		err := check()
		if err == nil {
			return nil
		}
		select {
		case <-p.done:
			return fmt.Errorf("%s exited: %v", p.name, p.waitErr)
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("gave up: %w", err)
		}
	}
}

// freePorts finds n loopback ports nothing listens on. Another process may
// take one before the server binds it; the server then fails to start,
// saying so.
func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range n {
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free port: %w", err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// writeServiceAccountKey writes an RSA key that signs and verifies the
// service account tokens.
func writeServiceAccountKey(path string) (string, error) {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return "", fmt.Errorf("service account key: %w", err)
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	return path, os.WriteFile(path, b, 0o600)
}

func randomToken() (string, error) {
	var b [24]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("admin token: %w", err)
	}
	return hex.EncodeToString(b[:]), nil
}
