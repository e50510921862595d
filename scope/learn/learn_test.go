package learn

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/callscope/callscope/scope"
)

var update = flag.Bool("update", false, "rewrite testdata/*.yaml from what learn writes")

func learnLines(t testing.TB, cfg Config, lines [][]byte) (*Learner, []Draft) {
	t.Helper()
	l, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Read(bytes.NewReader(bytes.Join(lines, []byte("\n")))); err != nil {
		t.Fatal(err)
	}
	return l, l.Drafts()
}

func joined(drafts []Draft) []byte {
	var b bytes.Buffer
	for i, d := range drafts {
		if i > 0 {
			b.WriteString("---\n")
		}
		b.Write(d.YAML)
	}
	return b.Bytes()
}

// roundTrip checks that the drafts load, and that judged against the
// events they were learnt from they find no violation.
func roundTrip(t *testing.T, drafts []Draft, events []byte) []scope.Policy {
	t.Helper()
	var policies []scope.Policy
	for _, d := range drafts {
		ps, err := scope.Parse(d.File, d.YAML)
		if err != nil {
			t.Fatalf("%s does not load: %v\n%s", d.File, err, d.YAML)
		}
		if len(ps) != 1 || ps[0].Name != d.Name {
			t.Fatalf("%s: got %d policies, want one named %s", d.File, len(ps), d.Name)
		}
		policies = append(policies, ps...)
	}
	judgements, err := Judge(policies, bytes.NewReader(events))
	if err != nil {
		t.Fatal(err)
	}
	allowed := 0
	for _, j := range judgements {
		switch j.Verdict {
		case scope.Violation:
			t.Errorf("line %d (%s): violation: %s", j.Line, j.Kind, j.Reason)
		case scope.Allowed:
			allowed++
		}
	}
	if allowed == 0 {
		t.Errorf("no call judged allowed of %d judgements", len(judgements))
	}
	return policies
}

func TestLearnRoundTrip(t *testing.T) {
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			lines := genEvents(seed, 20000)
			l, drafts := learnLines(t, Config{}, lines)
			roundTrip(t, drafts, bytes.Join(lines, []byte("\n")))
			st := l.Stats()
			var skipped uint64
			for _, n := range st.Skipped {
				skipped += n
			}
			if st.Lines != uint64(len(lines)) || st.Used+st.Merged+skipped+st.LossEvents != st.Lines {
				t.Errorf("stats do not add up: %+v", st)
			}
			if st.Skipped[SkipMalformed] == 0 || st.Skipped[SkipOtherKind] == 0 || st.Skipped[SkipNoIdentity] == 0 || st.LossEvents == 0 || st.BySNI == 0 {
				t.Errorf("stats %+v: want malformed lines, other kinds, calls without identity, losses and calls named by SNI", st)
			}
			// The same input gives the same bytes.
			_, again := learnLines(t, Config{}, lines)
			if !bytes.Equal(joined(drafts), joined(again)) {
				t.Error("two runs on the same input gave different output")
			}
		})
	}
}

// TestLearnExample learns testdata/example.jsonl and compares with
// testdata/example.yaml (go test -update rewrites it).
func TestLearnExample(t *testing.T) {
	data, err := os.ReadFile("testdata/example.jsonl")
	if err != nil {
		t.Fatal(err)
	}
	l, drafts := learnLines(t, Config{}, [][]byte{data})
	roundTrip(t, drafts, data)
	got := joined(drafts)
	golden := filepath.Join("testdata", "example.yaml")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("learnt:\n%s\nwant (%s):\n%s", got, golden, want)
	}
	st := l.Stats()
	if sum := st.Summary(); !strings.Contains(sum, "1 malformed JSON") || !strings.Contains(sum, "kernel/ring_buffer_full 37 in 1 event(s)") {
		t.Errorf("summary %q", sum)
	}
}

// call makes one connect line.
func call(t time.Time, conn int, exe, ip string, port int, name, outcome string) []byte {
	dst := fmt.Sprintf(`{"ip":%q,"port":%d}`, ip, port)
	if name != "" {
		dst = fmt.Sprintf(`{"ip":%q,"port":%d,"name":%q,"name_source":"dns"}`, ip, port, name)
	}
	return fmt.Appendf(nil, `{"schema":"callscope/v1","time":%q,"kind":"connect","conn":"%016x","dst":%s,"outcome":%q,"process":{"pid":1,"exe":%q},"identity":"exe:%s uid:0"}`,
		t.Format(time.RFC3339Nano), conn, dst, outcome, exe, exe)
}

func entries(d Draft) []string {
	var out []string
	for line := range strings.SplitSeq(string(d.YAML), "\n") {
		line = strings.TrimSpace(line)
		if strings.HasPrefix(line, "- ") && !strings.HasPrefix(line, "- to:") || strings.HasPrefix(line, "ports:") {
			if i := strings.Index(line, "  #"); i >= 0 {
				line = line[:i]
			}
			out = append(out, line)
		}
	}
	return out
}

func TestLearnGeneralizes(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)
	for _, tc := range []struct {
		name  string
		cfg   Config
		calls []c
		want  []string
	}{
		{"siblings make a wildcard", Config{}, []c{{"192.0.2.1", 443, "a.example.com"}, {"192.0.2.2", 443, "b.example.com"}, {"192.0.2.3", 443, "c.example.com"}, {"192.0.2.4", 443, "x.y.example.com"}},
			[]string{`- dns: "*.example.com"`, "- dns: x.y.example.com", "ports: [443]"}},
		{"too few siblings", Config{}, []c{{"192.0.2.1", 443, "a.example.com"}, {"192.0.2.2", 443, "b.example.com"}},
			[]string{"- dns: a.example.com", "- dns: b.example.com", "ports: [443]"}},
		{"wildcard-min 2", Config{WildcardMin: 2}, []c{{"192.0.2.1", 443, "a.example.com"}, {"192.0.2.2", 443, "b.example.com"}},
			[]string{`- dns: "*.example.com"`, "ports: [443]"}},
		{"no wildcards", Config{WildcardMin: -1}, []c{{"192.0.2.1", 443, "a.example.com"}, {"192.0.2.2", 443, "b.example.com"}, {"192.0.2.3", 443, "c.example.com"}},
			[]string{"- dns: a.example.com", "- dns: b.example.com", "- dns: c.example.com", "ports: [443]"}},
		{"never at a public suffix", Config{}, []c{{"192.0.2.1", 443, "a.co.uk"}, {"192.0.2.2", 443, "b.co.uk"}, {"192.0.2.3", 443, "c.co.uk"}, {"192.0.2.4", 443, "x.com"}, {"192.0.2.5", 443, "y.com"}, {"192.0.2.6", 443, "z.com"}},
			[]string{"- dns: x.com", "- dns: y.com", "- dns: z.com", "- dns: a.co.uk", "- dns: b.co.uk", "- dns: c.co.uk", "ports: [443]"}},
		{"below a public suffix", Config{}, []c{{"192.0.2.1", 443, "a.shop.co.uk"}, {"192.0.2.2", 443, "b.shop.co.uk"}, {"192.0.2.3", 443, "c.shop.co.uk"}},
			[]string{`- dns: "*.shop.co.uk"`, "ports: [443]"}},
		{"names lowercased, trailing dot dropped", Config{}, []c{{"192.0.2.1", 443, "API.Example.COM."}},
			[]string{"- dns: api.example.com", "ports: [443]"}},
		{"a name no dns entry takes is an address", Config{}, []c{{"192.0.2.1", 443, "bad name"}},
			[]string{"- cidr: 192.0.2.1/32", "ports: [443]"}},
		{"siblings merge up to /24", Config{}, []c{{"10.0.0.0", 80, ""}, {"10.0.0.1", 80, ""}, {"10.0.0.2", 80, ""}, {"10.0.0.3", 80, ""}, {"10.0.0.5", 80, ""}, {"10.0.1.0", 80, ""}},
			[]string{"- cidr: 10.0.0.0/30", "- cidr: 10.0.0.5/32", "- cidr: 10.0.1.0/32", "ports: [80]"}},
		{"a whole /24 stops there", Config{}, allOf("10.1.", 512),
			[]string{"- cidr: 10.1.0.0/24", "- cidr: 10.1.1.0/24", "ports: [80]"}},
		{"max-prefix /31", Config{MaxPrefix4: 31}, []c{{"10.0.0.0", 80, ""}, {"10.0.0.1", 80, ""}, {"10.0.0.2", 80, ""}, {"10.0.0.3", 80, ""}},
			[]string{"- cidr: 10.0.0.0/31", "- cidr: 10.0.0.2/31", "ports: [80]"}},
		{"max-prefix /32 merges nothing", Config{MaxPrefix4: 32}, []c{{"10.0.0.0", 80, ""}, {"10.0.0.1", 80, ""}},
			[]string{"- cidr: 10.0.0.0/32", "- cidr: 10.0.0.1/32", "ports: [80]"}},
		{"IPv6 up to /64", Config{}, []c{{"fd00::", 80, ""}, {"fd00::1", 80, ""}, {"fd00:0:0:1::", 80, ""}},
			[]string{`- cidr: "fd00::/127"`, `- cidr: "fd00:0:0:1::/128"`, "ports: [80]"}},
		{"ports as lists and ranges", Config{}, []c{{"10.0.0.1", 8000, ""}, {"10.0.0.1", 8001, ""}, {"10.0.0.1", 8002, ""}, {"10.0.0.1", 443, ""}, {"10.0.0.1", 9000, ""}, {"10.0.0.1", 9001, ""}},
			[]string{"- cidr: 10.0.0.1/32", `ports: [443, "8000-8002", 9000, 9001]`}},
		{"one rule per port set", Config{}, []c{{"10.0.0.1", 443, ""}, {"10.0.0.2", 443, ""}, {"10.0.0.3", 80, ""}, {"10.0.0.3", 443, ""}},
			[]string{"- cidr: 10.0.0.3/32", "ports: [80, 443]", "- cidr: 10.0.0.1/32", "- cidr: 10.0.0.2/32", "ports: [443]"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var lines [][]byte
			for i, cl := range tc.calls {
				lines = append(lines, call(t0.Add(time.Duration(i)*time.Second), i+1, "/bin/x", cl.ip, cl.port, cl.name, "refused"))
			}
			_, drafts := learnLines(t, tc.cfg, lines)
			if len(drafts) != 1 {
				t.Fatalf("%d drafts, want 1", len(drafts))
			}
			roundTrip(t, drafts, bytes.Join(lines, []byte("\n")))
			if got := entries(drafts[0]); strings.Join(got, "\n") != strings.Join(tc.want, "\n") {
				t.Errorf("got\n%s\nwant\n%s\nin\n%s", strings.Join(got, "\n"), strings.Join(tc.want, "\n"), drafts[0].YAML)
			}
		})
	}
}

type c struct {
	ip   string
	port int
	name string
}

// allOf gives calls to port 80 of the first n addresses from prefix.
func allOf(prefix string, n int) (out []c) {
	for i := range n {
		out = append(out, c{fmt.Sprintf("%s%d.%d", prefix, i/256, i%256), 80, ""})
	}
	return out
}

func TestLearnJoinsTLS(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)
	tls := func(t time.Time, conn int, sni string) []byte {
		return fmt.Appendf(nil, `{"schema":"callscope/v1","time":%q,"kind":"tls","conn":"%016x","dst":{"ip":"192.0.2.7","port":443,"name":%q,"name_source":"sni"},"tls":{"sni":%q},"process":{"pid":1,"exe":"/bin/x"},"identity":"exe:/bin/x uid:0"}`,
			t.Format(time.RFC3339Nano), conn, sni, sni)
	}
	lines := [][]byte{
		call(t0, 1, "/bin/x", "192.0.2.7", 443, "cdn.example.net", "established"),
		tls(t0.Add(time.Millisecond), 1, "api.example.org"),
		// No hello within the window: learnt by its resolved name, and its
		// late hello as a call of its own.
		call(t0.Add(time.Second), 2, "/bin/x", "192.0.2.8", 443, "late.example.net", "established"),
		tls(t0.Add(20*time.Second), 2, "late.example.org"),
		// Never a hello.
		call(t0.Add(21*time.Second), 3, "/bin/x", "192.0.2.9", 443, "", "established"),
	}
	l, drafts := learnLines(t, Config{}, lines)
	roundTrip(t, drafts, bytes.Join(lines, []byte("\n")))
	want := []string{"- sni: api.example.org", "- sni: late.example.org", "- dns: late.example.net", "- cidr: 192.0.2.9/32", "ports: [443]"}
	if got := entries(drafts[0]); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	if st := l.Stats(); st.Used != 4 || st.Merged != 1 || st.BySNI != 1 {
		t.Errorf("stats %+v, want 4 calls, one connect named by its hello", st)
	}
}

func TestLearnSubjects(t *testing.T) {
	t0 := "2026-11-27T04:00:00Z"
	lines := [][]byte{
		[]byte(`{"schema":"callscope/v1","time":"` + t0 + `","kind":"connect","dst":{"ip":"10.0.0.1","port":1},"outcome":"refused","process":{"exe":"/app/b"},"k8s":{"namespace":"payments","service_account":"billing"},"identity":"spiffe://cluster.local/ns/payments/sa/billing"}`),
		[]byte(`{"schema":"callscope/v1","time":"` + t0 + `","kind":"connect","dst":{"ip":"10.0.0.1","port":1},"outcome":"refused","process":{"exe":"/usr/sbin/nginx"},"identity":"unit:nginx.service"}`),
		[]byte(`{"schema":"callscope/v1","time":"` + t0 + `","kind":"connect","dst":{"ip":"10.0.0.1","port":1},"outcome":"refused","process":{"exe":"/opt/a*b?[c]\\d"},"identity":"exe:/opt/a*b?[c]\\d uid:0"}`),
		[]byte(`{"schema":"callscope/v1","time":"` + t0 + `","kind":"connect","dst":{"ip":"10.0.0.1","port":1},"outcome":"refused","process":{"pid":3}}`),
	}
	l, drafts := learnLines(t, Config{}, lines)
	roundTrip(t, drafts, bytes.Join(lines, []byte("\n")))
	var subjects []string
	for _, d := range drafts {
		subjects = append(subjects, d.Name+": "+d.Subject)
		if strings.ContainsAny(d.File, "/\\ *?[") || !strings.HasSuffix(d.File, ".yaml") {
			t.Errorf("file name %q", d.File)
		}
	}
	want := "exe.opt-a-b-c-d-a430c278: exe /opt/a*b?[c]\\d|payments.billing: namespace payments, serviceAccount billing|unit.nginx-service-b9695f9d: systemdUnit nginx.service"
	if got := strings.Join(subjects, "|"); got != want {
		t.Errorf("got %s\nwant %s", got, want)
	}
	if !bytes.Contains(drafts[0].YAML, []byte(`exe: "/opt/a\\*b\\?\\[c]\\\\d"`)) {
		t.Errorf("exe not escaped as a glob:\n%s", drafts[0].YAML)
	}
	if st := l.Stats(); st.Skipped[SkipNoIdentity] != 1 {
		t.Errorf("stats %+v, want one call without identity", st)
	}
}

func TestLearnWindowAndSkips(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)
	var in bytes.Buffer
	for i := range 10 {
		in.Write(call(t0.Add(time.Duration(i)*time.Minute), i+1, "/bin/x", fmt.Sprintf("10.0.0.%d", i), 80, "", "refused"))
		in.WriteString("\r\n")
	}
	in.WriteString("\n")
	in.WriteString(`{"schema":"callscope/v1","kind":"loss","time":"2026-11-27T04:05:30Z","loss":{"stage":"queue","reason":"queue_full","count":5}}` + "\n")
	in.WriteString(`{"schema":"callscope/v1","kind":"loss","time":"2026-11-27T05:05:30Z","loss":{"stage":"queue","reason":"queue_full","count":5}}` + "\n")
	in.WriteString(`{"schema":"callscope/v9","kind":"connect"}` + "\n")
	in.WriteString(`{"schema":"callscope/v1","kind":"connect","time":"2026-11-27T04:05:00Z"}` + "\n")
	in.WriteString(`{"schema":"callscope/v1","kind":"connect","time":"yesterday"}` + "\n")
	in.WriteString(`{"schema":"callscope/v1","kind":"connect","dst":{"port":"443"}}` + "\n")
	in.WriteString(`{"schema":"callscope/v1","pad":"` + strings.Repeat("x", MaxLine) + `"}` + "\n")
	in.WriteString(`{"schema":"callscope/v1","kind":"dns","time":"2026-11-27T04:05:00Z"}`) // no newline at the end
	l, err := New(Config{Since: t0.Add(2 * time.Minute), Until: t0.Add(7 * time.Minute)})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Read(&in); err != nil {
		t.Fatal(err)
	}
	drafts := l.Drafts()
	st := l.Stats()
	want := [numSkips]uint64{SkipBlank: 1, SkipOutsideWindow: 6, SkipUnknownSchema: 1, SkipIncomplete: 1, SkipMalformed: 2, SkipTooLong: 1, SkipOtherKind: 1}
	if st.Skipped != want || st.Used != 5 || st.LossEvents != 1 || st.Lines != 19 {
		t.Errorf("stats %+v\nwant skipped %v, 5 used, 1 loss event, 19 lines", st, want)
	}
	if len(drafts) != 1 || !bytes.Contains(drafts[0].YAML, []byte("- cidr: 10.0.0.2/31")) || !bytes.Contains(drafts[0].YAML, []byte("- cidr: 10.0.0.4/31")) || !bytes.Contains(drafts[0].YAML, []byte("- cidr: 10.0.0.6/32")) {
		t.Errorf("drafts:\n%s", joined(drafts))
	}
	if !bytes.Contains(drafts[0].YAML, []byte("# INCOMPLETE: the input reported 5 lost event(s)")) {
		t.Errorf("losses not said:\n%s", drafts[0].YAML)
	}
}

func TestLearnMaxPairs(t *testing.T) {
	t0 := time.Date(2026, 11, 27, 4, 0, 0, 0, time.UTC)
	var lines [][]byte
	for i := range 10 {
		lines = append(lines, call(t0, i+1, "/bin/x", fmt.Sprintf("10.0.0.%d", i), 80, "", "refused"))
	}
	lines = append(lines, call(t0, 99, "/bin/x", "10.0.0.0", 80, "", "refused")) // a pair known
	lines = append(lines, call(t0, 98, "/bin/y", "10.0.0.0", 80, "", "refused")) // a caller past the cap
	l, drafts := learnLines(t, Config{MaxPairs: 4}, lines)
	st := l.Stats()
	if st.Pairs != 4 || st.Skipped[SkipOverCap] != 7 || st.Used != 5 {
		t.Errorf("stats %+v, want 4 pairs, 7 calls past the cap, 5 learnt", st)
	}
	if len(drafts) != 1 || !bytes.Contains(drafts[0].YAML, []byte("# INCOMPLETE: 7 call(s) past --max-pairs 4 were not learnt")) {
		t.Errorf("drafts:\n%s", joined(drafts))
	}
}

func TestLearnConfig(t *testing.T) {
	for _, cfg := range []Config{{MaxPrefix4: 7}, {MaxPrefix4: 33}, {MaxPrefix6: 129}, {MaxPairs: -1},
		{Since: time.Unix(10, 0), Until: time.Unix(5, 0)}} {
		if _, err := New(cfg); err == nil {
			t.Errorf("%+v accepted", cfg)
		}
	}
}
