package scope

import (
	"errors"
	"os"
	"path/filepath"
	"testing"
)

// FuzzParse checks that Parse never panics, that its errors are always an
// *Errors naming the file, and that the policies it accepts hold together.
// Its seeds are testdata/fuzz/FuzzParse and the readable testdata/*.yaml.
func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob("testdata/*.yaml")
	for _, file := range files {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		policies, err := Parse("f.yaml", data)
		if err != nil {
			var errs *Errors
			if !errors.As(err, &errs) || len(*errs) == 0 {
				t.Fatalf("error %v (%T) is not a non-empty *Errors", err, err)
			}
			for _, e := range *errs {
				if e.Pos.File != "f.yaml" || e.Pos.Line < 0 || e.Pos.Column < 0 || e.Msg == "" {
					t.Fatalf("bad problem %#v", e)
				}
			}
			if policies != nil {
				t.Fatalf("policies returned along with an error")
			}
			return
		}
		seen := map[string]bool{}
		for _, p := range policies {
			checkPolicy(t, p)
			if seen[p.Name] {
				t.Fatalf("name %q accepted twice", p.Name)
			}
			seen[p.Name] = true
		}
	})
}

// checkPolicy fails unless p is as Parse promises.
func checkPolicy(t *testing.T, p Policy) {
	t.Helper()
	if p.Name == "" || checkSubdomain(p.Name) != nil {
		t.Fatalf("bad name %q", p.Name)
	}
	if p.Source.File == "" || p.Source.Line < 1 {
		t.Fatalf("%s: no source", p.Name)
	}
	s := p.Subject
	if s.Namespace == "" && s.ServiceAccount == "" && len(s.PodLabels) == 0 && s.SpiffeID == "" &&
		s.SystemdUnit == "" && s.Exe == "" && s.Cgroup == "" {
		t.Fatalf("%s: empty subject", p.Name)
	}
	for _, glob := range []string{s.SpiffeID, s.SystemdUnit, s.Exe, s.Cgroup} {
		if glob != "" && checkGlob(glob) != nil {
			t.Fatalf("%s: bad glob %q", p.Name, glob)
		}
	}
	for _, r := range p.Egress {
		if r.Protocol != "tcp" || len(r.To) == 0 {
			t.Fatalf("%s: bad rule %+v", p.Name, r)
		}
		for _, peer := range r.To {
			set := 0
			if peer.CIDR.IsValid() {
				set++
				if peer.CIDR != peer.CIDR.Masked() || peer.CIDR.Addr().Is4In6() || peer.CIDR.Addr().Zone() != "" {
					t.Fatalf("%s: bad prefix %v", p.Name, peer.CIDR)
				}
			}
			for _, host := range []string{peer.DNS, peer.SNI} {
				if host != "" {
					set++
					if canon, err := hostPattern(host); err != nil || canon != host {
						t.Fatalf("%s: pattern %q is not canonical (%q, %v)", p.Name, host, canon, err)
					}
				}
			}
			for _, c := range []struct {
				v     string
				check func(string) error
			}{{peer.Service, checkService}, {peer.Namespace, checkDNSLabel}, {peer.SpiffeID, checkSpiffeGlob}} {
				if c.v != "" {
					set++
					if err := c.check(c.v); err != nil {
						t.Fatalf("%s: bad callee %q: %v", p.Name, c.v, err)
					}
				}
			}
			if set != 1 {
				t.Fatalf("%s: peer %+v has %d fields set", p.Name, peer, set)
			}
		}
		for _, pr := range r.Ports {
			if pr.From < 1 || pr.From > pr.To {
				t.Fatalf("%s: bad port range %+v", p.Name, pr)
			}
		}
	}
}
