package exporter

import (
	"bytes"
	"fmt"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/callscope/callscope/collector"
	"github.com/callscope/callscope/enrich"
	"github.com/callscope/callscope/scope"
)

// FuzzEncoder checks that any event encodes as one valid JSON line whose
// strings read back as encoding/json would give them, and that strings are
// escaped byte for byte as encoding/json escapes them.
func FuzzEncoder(f *testing.F) {
	f.Add("worker-1", "inst", "billing", "/app/billing", "--prod", "/kubepods.slice/x.scope",
		"spiffe://cluster.local/ns/a/sa/b", "", []byte{10, 0, 3, 7}, uint64(0x1a2b3c), uint16(443), uint16(0), int64(1795753924123456789))
	f.Add("", "", "a\x00b", "\xff\xfe", "quote\"back\\slash", "\u2028\u2029", "🦫\n\t\r", "eth0",
		[]byte{0xfe, 0x80, 15: 1}, uint64(0), uint16(0), uint16(unix.ECONNREFUSED), int64(0))
	f.Add("n", "i", "", "", "", "", "", "", []byte{}, ^uint64(0), ^uint16(0), ^uint16(0), int64(-1))

	schema := ocsfSchema(f)
	f.Fuzz(func(t *testing.T, node, instance, comm, exe, arg, path, identity, zone string,
		ip []byte, cookie uint64, port, errno uint16, ns int64) {
		for _, s := range []string{node, instance, comm, exe, arg, path, identity, zone} {
			if got, want := appendString(nil, s), encodingJSONString(t, s); !bytes.Equal(got, want) {
				t.Fatalf("appendString(%q) = %s, want %s", s, got, want)
			}
		}

		var addr netip.Addr
		switch {
		case len(ip) >= 16:
			addr = netip.AddrFrom16([16]byte(ip)).WithZone(zone)
		case len(ip) >= 4:
			addr = netip.AddrFrom4([4]byte(ip))
		}
		ev := enrich.Event{
			Event: collector.Event{
				Kind:     collector.KindConnect,
				Outcome:  collector.Outcome(errno % 7), // the outcomes there are
				Errno:    unix.Errno(errno),
				Time:     ns,
				Cookie:   cookie,
				Src:      netip.AddrPortFrom(addr, port),
				Dst:      netip.AddrPortFrom(addr, ^port),
				PID:      uint32(cookie),
				UID:      uint32(cookie >> 32),
				NetNS:    uint32(errno),
				CgroupID: cookie >> 1,
			},
			Process:    &enrich.Process{Exe: exe, Cmdline: []string{arg, exe}, PPID: uint32(port)},
			CgroupPath: path,
			Identity:   identity,
		}
		copy(ev.Comm[:], comm)

		enc := NewEncoder(node, instance)
		line := enc.Append(nil, &scope.Event{Event: ev})
		m := decodeLine(t, line)

		// The same event as an OCSF record: valid JSON and valid OCSF
		// whatever the bytes.
		record := NewOCSFEncoder(node, instance, arg).Append(nil, &scope.Event{Event: ev})
		decodeLine(t, record)
		// A Network Activity record needs an endpoint: every call has a
		// destination address, and only the fuzzer makes one without.
		if err := schema.Check(record); err != nil && addr.IsValid() {
			t.Errorf("not valid OCSF: %v\n%s", err, record)
		}

		want := func(s string) string { return viaEncodingJSON(t, s) }
		wantString := func(field string, got any, s string) {
			t.Helper()
			if s == "" {
				if got != nil {
					t.Errorf("%s = %q, want it left out", field, got)
				}
				return
			}
			if got != want(s) {
				t.Errorf("%s = %q, want %q", field, got, want(s))
			}
		}
		proc := m["process"].(obj)
		wantString("node", m["node"], node)
		wantString("id", m["id"], instance+"-1")
		wantString("comm", proc["comm"], ev.CommString())
		wantString("exe", proc["exe"], exe)
		cmdline := proc["cmdline"].([]any)
		// Empty arguments are real argv entries, so they are kept.
		if len(cmdline) != 2 || cmdline[0] != want(arg) || cmdline[1] != want(exe) {
			t.Errorf("cmdline = %q, want [%q %q]", cmdline, want(arg), want(exe))
		}
		wantString("identity", m["identity"], identity)
		if path != "" {
			wantString("cgroup.path", m["cgroup"].(obj)["path"], path)
		}

		if got, err := time.Parse(time.RFC3339Nano, m["time"].(string)); err != nil || got.UnixNano() != ns {
			t.Errorf("time %d written as %q (%v)", ns, m["time"], err)
		}
		if wantConn := fmt.Sprintf("%016x", cookie); cookie == 0 && m["conn"] != nil || cookie != 0 && m["conn"] != wantConn {
			t.Errorf("conn = %v for cookie %#x", m["conn"], cookie)
		}
		wantError := unix.ErrnoName(unix.Errno(errno))
		if wantError == "" && errno != 0 {
			wantError = strconv.Itoa(int(errno))
		}
		wantString("error", m["error"], wantError)
		if addr.IsValid() {
			for _, side := range []string{"src", "dst"} {
				wantString(side+".ip", m[side].(obj)["ip"], addr.String())
			}
			if back, err := netip.ParseAddr(m["dst"].(obj)["ip"].(string)); zone == "" && (err != nil || back != addr) {
				t.Errorf("dst.ip %v does not parse back to %v (%v)", m["dst"].(obj)["ip"], addr, err)
			}
			if got := m["dst"].(obj)["port"]; got != float64(^port) {
				t.Errorf("dst.port = %v, want %d", got, ^port)
			}
		} else if m["src"] != nil || m["dst"] != nil || m["family"] != nil {
			t.Errorf("addresses written for no address: %s", line)
		}
	})
}
