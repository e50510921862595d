package learn

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"time"
)

// genEvents makes n event lines of a few callers calling many
// destinations, as the agent writes them: connects of every outcome, tls
// events after established connects (some to other names than resolved),
// callees named by the cluster, names resolved by DNS, bare addresses of
// both families, and now and then a loss, a dns event or a stray line.
func genEvents(seed uint64, n int) [][]byte {
	r := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))
	type caller struct {
		exe, identity, ns, sa string
	}
	callers := []caller{
		{exe: "/app/billing", identity: "spiffe://cluster.local/ns/payments/sa/billing", ns: "payments", sa: "billing"},
		{exe: "/app/ledger", identity: "spiffe://cluster.local/ns/payments/sa/ledger", ns: "payments", sa: "ledger"},
		{exe: "/usr/sbin/nginx", identity: "unit:nginx.service"},
		{exe: "/usr/lib/systemd/systemd-resolved", identity: `unit:dbus-org.freedesktop\x2dresolve1.service`},
		{exe: "/usr/bin/curl", identity: "exe:/usr/bin/curl uid:0"},
		{exe: "/usr/bin/curl", identity: "exe:/usr/bin/curl uid:1000"},
		{exe: "/opt/odd [x]/run*", identity: "exe:/opt/odd [x]/run* uid:0"},
	}
	names := []string{
		"api.stripe.com", "files.stripe.com", "hooks.stripe.com", "m.stripe.com",
		"a.example.co.uk", "b.example.co.uk", "c.example.co.uk",
		"example.co.uk", "co.uk", "x.co.uk", "y.co.uk", "z.co.uk",
		"s3.eu-west-1.amazonaws.com", "s3.us-east-1.amazonaws.com", "sts.amazonaws.com",
		"API.GitHub.com.", "github.com", "bad name.example", "db.internal",
	}
	ports := []uint16{443, 443, 443, 80, 5432, 8000, 8001, 8002, 8003, 8080, 53, 0}
	outcomes := []string{"established", "established", "established", "established", "refused", "timeout", "unreachable", "reset", "failed"}
	t0 := time.Date(2026, 11, 27, 4, 32, 0, 0, time.UTC)
	var out [][]byte
	seq := 0
	emit := func(m map[string]any) {
		seq++
		m["schema"] = Schema
		m["id"] = fmt.Sprintf("gen-%d", seq)
		m["seq"] = seq
		b, err := json.Marshal(m)
		if err != nil {
			panic(err)
		}
		out = append(out, b)
	}
	var conn uint64
	for len(out) < n {
		t := t0.Add(time.Duration(len(out)) * 37 * time.Millisecond)
		ts := t.Format(time.RFC3339Nano)
		switch x := r.IntN(100); {
		case x == 0:
			emit(map[string]any{"time": ts, "node": "n", "kind": "loss", "loss": map[string]any{"stage": "kernel", "reason": "ring_buffer_full", "count": r.IntN(50) + 1}})
			continue
		case x == 1:
			emit(map[string]any{"time": ts, "node": "n", "kind": "dns"})
			continue
		case x == 2:
			out = append(out, []byte(`{"schema":"callscope/v1","kind":"connect"`))
			continue
		}
		c := callers[r.IntN(len(callers))]
		conn++
		port := ports[r.IntN(len(ports))]
		dst := map[string]any{"port": port}
		switch r.IntN(6) {
		case 0: // a bare address
			if r.IntN(3) == 0 {
				dst["ip"] = netip.AddrFrom16([16]byte{0xfd, 0, 0, 0, 0, 0, 0, byte(r.IntN(2)), 0, 0, 0, 0, 0, 0, 0, byte(r.IntN(8))}).String()
			} else {
				dst["ip"] = fmt.Sprintf("10.%d.%d.%d", r.IntN(2), r.IntN(3), r.IntN(12))
			}
		case 1: // a Service, or a pod of a namespace
			dst["ip"] = fmt.Sprintf("10.96.0.%d", r.IntN(4))
			if r.IntN(2) == 0 {
				dst["k8s"] = map[string]any{"namespace": "payments", "service": []string{"ledger", "audit"}[r.IntN(2)]}
			} else {
				dst["k8s"] = map[string]any{"namespace": "shared", "pod": "p", "service_account": "s"}
			}
		default: // a name resolved
			dst["ip"] = fmt.Sprintf("192.0.2.%d", r.IntN(40))
			dst["name"] = names[r.IntN(len(names))]
			dst["name_source"] = "dns"
		}
		outcome := outcomes[r.IntN(len(outcomes))]
		ev := map[string]any{
			"time": ts, "node": "n", "kind": "connect", "conn": fmt.Sprintf("%016x", conn), "proto": "tcp",
			"dst": dst, "outcome": outcome,
			"process": map[string]any{"pid": 100, "exe": c.exe, "uid": 0},
			"cgroup":  map[string]any{"id": 1, "path": "/x"},
		}
		if c.identity != "" {
			ev["identity"] = c.identity
		}
		if c.ns != "" {
			ev["k8s"] = map[string]any{"namespace": c.ns, "pod": "p-1", "service_account": c.sa}
		}
		if r.IntN(40) == 0 {
			delete(ev, "identity")
			delete(ev, "k8s")
			ev["process"] = map[string]any{"pid": 7}
		}
		emit(ev)
		if outcome != "established" || r.IntN(3) == 0 {
			continue
		}
		if r.IntN(8) == 0 {
			// No ClientHello: the agent, with policies, closes the call.
			v := clone(ev)
			v["kind"] = "verdict"
			v["time"] = t.Add(10 * time.Second).Format(time.RFC3339Nano)
			emit(v)
			continue
		}
		tl := clone(ev)
		delete(tl, "outcome")
		tl["kind"] = "tls"
		tl["time"] = t.Add(time.Duration(r.IntN(900)) * time.Millisecond).Format(time.RFC3339Nano)
		d := clone(dst)
		sni := names[r.IntN(len(names))]
		if r.IntN(10) == 0 {
			sni = "" // no SNI
		}
		delete(d, "name")
		delete(d, "name_source")
		if sni != "" {
			d["name"], d["name_source"] = sni, "sni"
			tl["tls"] = map[string]any{"sni": sni, "alpn": []string{"h2"}}
		} else {
			tl["tls"] = map[string]any{"alpn": []string{"h2"}}
		}
		tl["dst"] = d
		emit(tl)
	}
	return out[:n]
}

func clone(m map[string]any) map[string]any {
	c := make(map[string]any, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}
