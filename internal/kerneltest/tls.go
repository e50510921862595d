package kerneltest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TLSServer is an HTTPS server on a loopback address, with a certificate
// made for the test.
type TLSServer struct {
	Addr netip.AddrPort
	// Hellos receives the server name of each ClientHello, as crypto/tls
	// read it: what the kernel capture must agree with.
	Hellos chan string
}

// NewTLSServer serves HTTPS (HTTP/2 and HTTP/1.1) on addr ("127.0.0.1:0",
// "[::1]:0") until the test ends.
func NewTLSServer(t testing.TB, addr string) *TLSServer {
	t.Helper()
	cert := selfSigned(t)
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &TLSServer{Addr: ln.Addr().(*net.TCPAddr).AddrPort(), Hellos: make(chan string, 1024)}
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprintln(w, "ok") }),
		TLSConfig: &tls.Config{
			Certificates: []tls.Certificate{cert},
			NextProtos:   []string{"h2", "http/1.1"},
			GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
				s.Hellos <- h.ServerName
				return nil, nil
			},
		},
		ReadHeaderTimeout: 5 * time.Second,
		ErrorLog:          nil,
	}
	go srv.ServeTLS(ln, "", "")
	t.Cleanup(func() { srv.Close() })
	return s
}

func selfSigned(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1),
		Subject:      pkix.Name{CommonName: "callscope test"},
		DNSNames:     []string{"localhost", "*.test"},
		IPAddresses:  []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// TLSClient describes a Go crypto/tls client run as a helper process: it
// dials Addr, completes a handshake with default settings (so a large,
// post-quantum ClientHello) and exits.
type TLSClient struct {
	Addr       netip.AddrPort
	ServerName string // "" sends no SNI
	ALPN       []string
	// MSS, when set, shrinks the segments the client sends (TCP_MAXSEG),
	// so that its ClientHello spans several of them.
	MSS    int
	Cgroup *Cgroup
}

// Run runs the client and returns its pid once it is done.
func (c TLSClient) Run(t testing.TB) int {
	t.Helper()
	return runHelper(t, "tls", c.Cgroup, "",
		"CALLSCOPE_TEST_ADDR="+c.Addr.String(),
		"CALLSCOPE_TEST_SNI="+c.ServerName,
		"CALLSCOPE_TEST_ALPN="+strings.Join(c.ALPN, ","),
		"CALLSCOPE_TEST_MSS="+strconv.Itoa(c.MSS))
}

// InCgroup starts cmd in cg (nil leaves it where the test runs).
func InCgroup(cmd *exec.Cmd, cg *Cgroup) {
	if cg == nil {
		return
	}
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = int(cg.Dir.Fd())
}

func tlsMain() error {
	mss, _ := strconv.Atoi(os.Getenv("CALLSCOPE_TEST_MSS"))
	d := &net.Dialer{Timeout: 5 * time.Second}
	if mss > 0 {
		d.Control = func(network, address string, rc syscall.RawConn) error {
			var serr error
			err := rc.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_MAXSEG, mss)
			})
			if err != nil {
				return err
			}
			return serr
		}
	}
	cfg := &tls.Config{InsecureSkipVerify: true, ServerName: os.Getenv("CALLSCOPE_TEST_SNI")}
	if a := os.Getenv("CALLSCOPE_TEST_ALPN"); a != "" {
		cfg.NextProtos = strings.Split(a, ",")
	}
	raw, err := d.Dial("tcp", os.Getenv("CALLSCOPE_TEST_ADDR"))
	if err != nil {
		return err
	}
	defer raw.Close()
	conn := tls.Client(raw, cfg)
	if err := conn.Handshake(); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	return conn.Close()
}
