package kerneltest

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
)

// Peer is a test host in a network namespace of its own, joined to this
// one by a veth pair. Its firewall makes it answer as a test needs:
//
//	port DropPort:        SYNs dropped, so connects time out
//	port UnreachablePort: ICMP host unreachable
//	any other port:       RST (nothing listens)
//
// Its addresses are in 198.18.0.0/15 (RFC 2544, benchmarking), on a /30
// routed only over the veth: no test traffic leaves the machine.
type Peer struct {
	Addr  netip.Addr // the peer's address
	Local netip.Addr // this side's address
	NetNS string     // path of the peer's namespace, for setns
}

const (
	DropPort        = 9
	UnreachablePort = 10
)

// NewPeer makes the namespace and veth pair; both go when the test ends.
func NewPeer(t testing.TB) *Peer {
	t.Helper()
	for _, tool := range []string{"ip", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed for network namespace tests (apt-get install iproute2 nftables): %v", tool, err)
		}
	}
	r := rand.Uint32()
	ns := fmt.Sprintf("cstest%08x", r)
	host, peer := fmt.Sprintf("csh%08x", r), fmt.Sprintf("csp%08x", r)
	// 198.18.0.0/15 holds 32768 /30s; pick one by the random id.
	base := 198<<24 | 18<<16 | (r%32768)<<2
	ip := func(n uint32) netip.Addr {
		v := base + n
		return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)})
	}
	p := &Peer{Addr: ip(2), Local: ip(1), NetNS: "/var/run/netns/" + ns}

	Run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	Run(t, "ip", "link", "add", host, "type", "veth", "peer", "name", peer)
	t.Cleanup(func() { exec.Command("ip", "link", "del", host).Run() })
	Run(t, "ip", "link", "set", peer, "netns", ns)
	Run(t, "ip", "addr", "add", p.Local.String()+"/30", "dev", host)
	Run(t, "ip", "link", "set", host, "up")
	Run(t, "ip", "-n", ns, "addr", "add", p.Addr.String()+"/30", "dev", peer)
	Run(t, "ip", "-n", ns, "link", "set", peer, "up")
	Run(t, "ip", "-n", ns, "link", "set", "lo", "up")

	rules := fmt.Sprintf(`table inet callscope_test {
	chain input {
		type filter hook input priority 0; policy accept;
		tcp dport %d drop
		tcp dport %d reject with icmpx type host-unreachable
	}
}
`, DropPort, UnreachablePort)
	cmd := exec.Command("ip", "netns", "exec", ns, "nft", "-f", "-")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("nft in %s: %v\n%s", ns, err, out)
	}
	return p
}

// NewNetNS makes an empty network namespace, with only its loopback up, and
// returns its path for setns; it goes when the test ends. Nothing is
// routed there: a connect to any address but loopback fails inside
// connect(2) with ENETUNREACH.
func NewNetNS(t testing.TB) string {
	t.Helper()
	ns := fmt.Sprintf("cstest%08x", rand.Uint32())
	Run(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", ns).Run() })
	Run(t, "ip", "-n", ns, "link", "set", "lo", "up")
	return "/var/run/netns/" + ns
}
