package scope

import (
	"net/netip"
	"testing"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/collector/tlshello"
	"github.com/callscope/callscope/enrich"
)

func TestFindings(t *testing.T) {
	envs := map[string]string{"payments": "prod", "ledger": "prod", "sandbox": "dev"}
	r := newFindingRules(FindingsConfig{Environment: func(ns string) (string, bool) { v, ok := envs[ns]; return v, ok }})
	connect := func(dst string, mod ...func(*enrich.Event)) *enrich.Event {
		ev := &enrich.Event{}
		ev.Kind, ev.Outcome, ev.PID, ev.LoginUID = collector.KindConnect, collector.OutcomeEstablished, 4242, collector.LoginUIDUnset
		ev.Dst = netip.MustParseAddrPort(dst)
		for _, f := range mod {
			f(ev)
		}
		return ev
	}
	tlsEvent := func(h *tlshello.ClientHello, sh *tlshello.ServerHello, mod ...func(*enrich.Event)) *enrich.Event {
		ev := connect("10.0.0.1:443", mod...)
		ev.Kind, ev.Hello, ev.ServerHello = collector.KindTLS, h, sh
		return ev
	}
	tty := func(ev *enrich.Event) { ev.TTY = true }
	login := func(ev *enrich.Event) { ev.LoginUID = 1000 }
	inPod := func(ev *enrich.Event) {
		ev.Pod = &enrich.Pod{Namespace: "payments", ServiceAccount: "billing"}
		ev.Identity = "spiffe://cluster.local/ns/payments/sa/billing"
	}
	inPodCgroup := func(ev *enrich.Event) { ev.Cgroup.PodUID = "1b6a1c4e-0000-0000-0000-000000000001" }
	inUnit := func(ev *enrich.Event) { ev.Cgroup.Unit = "billing.service"; ev.Identity = "unit:billing.service" }
	to := func(ns string) func(*enrich.Event) {
		return func(ev *enrich.Event) { ev.Callee = &enrich.Callee{Namespace: ns, Service: "x"} }
	}
	modern := &tlshello.ClientHello{SNI: "api.example", Versions: []uint16{0x0304, 0x0303}}

	for _, tc := range []struct {
		name string
		ev   *enrich.Event
		want []Finding
	}{
		{"a workload's plain call", connect("10.0.0.1:8080", inPod), nil},
		{"a terminal in a pod", connect("10.0.0.1:8080", inPod, tty), []Finding{HumanUse}},
		{"a login in a unit", connect("10.0.0.1:8080", inUnit, login), []Finding{HumanUse}},
		{"a terminal in a pod whose metadata is unknown", connect("10.0.0.1:8080", inPodCgroup, tty), []Finding{HumanUse}},
		{"a terminal on the host, as a person", connect("10.0.0.1:8080", tty, login), nil},
		{"no process known", connect("10.0.0.1:8080", inPod, tty, func(ev *enrich.Event) { ev.PID = 0 }), nil},
		{"plaintext", connect("10.0.0.1:443", func(ev *enrich.Event) { ev.Plaintext = true }), []Finding{Plaintext}},
		{"telnet", connect("10.0.0.1:23"), []Finding{CleartextProtocol}},
		{"telnet refused", connect("10.0.0.1:23", func(ev *enrich.Event) { ev.Outcome = collector.OutcomeRefused }), nil},
		{"modern TLS", tlsEvent(modern, &tlshello.ServerHello{Version: 0x0304}), nil},
		{"TLS 1.1 at most", tlsEvent(&tlshello.ClientHello{SNI: "old.example", LegacyVersion: 0x0302}, nil), []Finding{LegacyTLS}},
		{"server chose TLS 1.0", tlsEvent(modern, &tlshello.ServerHello{Version: 0x0301}), []Finding{LegacyTLS}},
		{"a retry request is no choice", tlsEvent(modern, &tlshello.ServerHello{Version: 0x0301, HelloRetry: true}), nil},
		{"no SNI", tlsEvent(&tlshello.ClientHello{Versions: []uint16{0x0304}}, nil), []Finding{NoSNI}},
		{"no SNI in a cut hello is unknown", tlsEvent(&tlshello.ClientHello{Versions: []uint16{0x0304}, Truncated: true}, nil), nil},
		{"same environment", connect("10.96.0.1:443", inPod, to("ledger")), nil},
		{"another environment", connect("10.96.0.1:443", inPod, to("sandbox")), []Finding{CrossEnvironment}},
		{"an unlabelled namespace", connect("10.96.0.1:443", inPod, to("kube-system")), nil},
		{"callee unknown", connect("10.96.0.1:443", inPod), nil},
		{"several", tlsEvent(&tlshello.ClientHello{LegacyVersion: 0x0301}, nil, inPod, tty, to("sandbox")), []Finding{HumanUse, LegacyTLS, NoSNI, CrossEnvironment}},
		{"a loss is no call", func() *enrich.Event {
			ev := connect("10.0.0.1:23", inPod, tty)
			ev.Kind = collector.KindLoss
			return ev
		}(), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var want Findings
			for _, f := range tc.want {
				want.add(f)
			}
			if got := r.find(tc.ev); got != want {
				t.Errorf("findings %b, want %b", got, want)
			}
		})
	}
}

func TestFindingReasons(t *testing.T) {
	ev := &Event{}
	ev.Kind, ev.PID, ev.TTY, ev.LoginUID = collector.KindTLS, 1, true, 1000
	ev.Dst = netip.MustParseAddrPort("10.0.0.1:443")
	ev.Identity = "spiffe://cluster.local/ns/payments/sa/billing"
	ev.Pod = &enrich.Pod{Namespace: "payments"}
	ev.Callee = &enrich.Callee{Namespace: "sandbox"}
	ev.Hello = &tlshello.ClientHello{LegacyVersion: 0x0302}
	for f, want := range map[Finding]string{
		HumanUse:          "a person's session (a controlling terminal, login uid 1000) called as spiffe://cluster.local/ns/payments/sa/billing",
		Plaintext:         "the first data sent to port 443, where TLS is expected, was no TLS handshake",
		CleartextProtocol: "port 443 carries credentials in clear",
		LegacyTLS:         "the ClientHello offers TLS 1.1 at most",
		NoSNI:             "the ClientHello names no server",
		CrossEnvironment:  "namespace payments called namespace sandbox of another environment",
	} {
		if got := string(AppendFindingReason(nil, ev, f)); got != want {
			t.Errorf("%s: %q, want %q", Catalogue[f].ID, got, want)
		}
	}
	ev.Hello, ev.ServerHello = &tlshello.ClientHello{Versions: []uint16{0x0304}}, &tlshello.ServerHello{Version: 0x0300}
	if got := string(AppendFindingReason(nil, ev, LegacyTLS)); got != "the server chose SSL 3.0" {
		t.Errorf("legacy server: %q", got)
	}
	buf := make([]byte, 0, 256)
	if n := testing.AllocsPerRun(100, func() { AppendFindingReason(buf[:0], ev, HumanUse) }); n != 0 {
		t.Errorf("%v allocations per reason", n)
	}
}

func TestFindingsAllocs(t *testing.T) {
	r := newFindingRules(FindingsConfig{Environment: func(string) (string, bool) { return "prod", true }})
	ev := &enrich.Event{}
	ev.Kind, ev.Outcome, ev.PID, ev.TTY = collector.KindConnect, collector.OutcomeEstablished, 1, true
	ev.Dst = netip.MustParseAddrPort("10.0.0.1:21")
	ev.Pod = &enrich.Pod{Namespace: "a"}
	ev.Callee = &enrich.Callee{Namespace: "b"}
	if n := testing.AllocsPerRun(1000, func() { r.find(ev) }); n != 0 {
		t.Errorf("%v allocations per event", n)
	}
}
