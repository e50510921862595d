// Package ocsfcheck checks OCSF records against a compact fixture of the
// schema (exporter/testdata/ocsf/schema-<version>.json, derived from the
// schema repository by exporter/testdata/ocsf/gen.go), for tests.
package ocsfcheck

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
)

// Attr is an attribute of a class or an object.
type Attr struct {
	Type        string   `json:"type"`
	Base        string   `json:"base"`
	Object      bool     `json:"object"`
	Array       bool     `json:"array"`
	Requirement string   `json:"requirement"`
	Enum        []string `json:"enum"`
	Range       []int64  `json:"range"`
	MaxLen      int      `json:"max_len"`
	Profile     string   `json:"profile"`
}

// Type is a class or an object.
type Type struct {
	UID         int             `json:"uid"`
	CategoryUID int             `json:"category_uid"`
	Attributes  map[string]Attr `json:"attributes"`
	AtLeastOne  []string        `json:"at_least_one"`
	JustOne     []string        `json:"just_one"`
}

// Schema is the fixture.
type Schema struct {
	Version string          `json:"version"`
	Classes map[string]Type `json:"classes"`
	Objects map[string]Type `json:"objects"`
}

// Load reads a fixture.
func Load(path string) (*Schema, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := new(Schema)
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// Check validates one record: its class by class_uid, and every attribute
// by the class's and its objects' definitions. It returns every problem
// found, one per line, or nil. Attributes under "unmapped" are not checked.
func (s *Schema) Check(record []byte) error {
	d := json.NewDecoder(bytes.NewReader(record))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		return fmt.Errorf("not a JSON object: %w", err)
	}
	c := &checker{s: s, profiles: map[string]bool{}}
	uid, _ := m["class_uid"].(json.Number)
	var class *Type
	for _, t := range s.Classes {
		if uid.String() == strconv.Itoa(t.UID) {
			class = &t
			break
		}
	}
	if class == nil {
		return fmt.Errorf("class_uid %v: no such class in the fixture", m["class_uid"])
	}
	if md, ok := m["metadata"].(map[string]any); ok {
		if v, _ := md["version"].(string); v != s.Version {
			c.fail("metadata.version", "%q, want %q", v, s.Version)
		}
		if ps, ok := md["profiles"].([]any); ok {
			for _, p := range ps {
				if p, ok := p.(string); ok {
					c.profiles[p] = true
				}
			}
		}
	}
	if n, ok := m["category_uid"].(json.Number); ok && n.String() != strconv.Itoa(class.CategoryUID) {
		c.fail("category_uid", "%s, want %d", n, class.CategoryUID)
	}
	if a, ok := m["activity_id"].(json.Number); ok {
		act, _ := a.Int64()
		if t, _ := m["type_uid"].(json.Number); t.String() != strconv.FormatInt(int64(class.UID)*100+act, 10) {
			c.fail("type_uid", "%s, want class_uid*100+activity_id = %d", t, int64(class.UID)*100+act)
		}
	}
	c.object("", class, m)
	if len(c.errs) == 0 {
		return nil
	}
	sort.Strings(c.errs)
	return fmt.Errorf("%s", strings.Join(c.errs, "\n"))
}

type checker struct {
	s        *Schema
	profiles map[string]bool
	errs     []string
}

func (c *checker) fail(path, format string, args ...any) {
	c.errs = append(c.errs, path+": "+fmt.Sprintf(format, args...))
}

func (c *checker) object(path string, t *Type, m map[string]any) {
	applies := func(a Attr) bool { return a.Profile == "" || c.profiles[a.Profile] }
	for name, v := range m {
		p := join(path, name)
		a, ok := t.Attributes[name]
		switch {
		case !ok:
			c.fail(p, "no such attribute")
			continue
		case !applies(a):
			c.fail(p, "an attribute of profile %s, which metadata.profiles does not name", a.Profile)
			continue
		case name == "unmapped":
			if _, ok := v.(map[string]any); !ok {
				c.fail(p, "want an object")
			}
			continue
		}
		if a.Array {
			vs, ok := v.([]any)
			if !ok {
				c.fail(p, "want an array")
				continue
			}
			for i, e := range vs {
				c.value(p+"["+strconv.Itoa(i)+"]", a, e)
			}
			continue
		}
		c.value(p, a, v)
	}
	for name, a := range t.Attributes {
		if a.Requirement == "required" && applies(a) {
			if _, ok := m[name]; !ok {
				c.fail(join(path, name), "required, missing")
			}
		}
	}
	if len(t.AtLeastOne) > 0 && !slices.ContainsFunc(t.AtLeastOne, func(n string) bool { _, ok := m[n]; return ok }) {
		c.fail(path, "wants at least one of %v", t.AtLeastOne)
	}
	if len(t.JustOne) > 0 {
		n := 0
		for _, k := range t.JustOne {
			if _, ok := m[k]; ok {
				n++
			}
		}
		if n != 1 {
			c.fail(path, "wants just one of %v", t.JustOne)
		}
	}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

func (c *checker) value(path string, a Attr, v any) {
	if a.Object {
		o, ok := v.(map[string]any)
		if !ok {
			c.fail(path, "want an object (%s)", a.Type)
			return
		}
		t, ok := c.s.Objects[a.Type]
		if !ok {
			c.fail(path, "object %s is not in the fixture: add it to gen.go's objects and run it again", a.Type)
			return
		}
		c.object(path, &t, o)
		return
	}
	base := a.Base
	if base == "" {
		base = a.Type
	}
	switch base {
	case "object", "json_t":
		return
	case "string_t":
		s, ok := v.(string)
		if !ok {
			c.fail(path, "want a string (%s), have %T", a.Type, v)
			return
		}
		if a.MaxLen > 0 && len(s) > a.MaxLen {
			c.fail(path, "longer than %d", a.MaxLen)
		}
		if len(a.Enum) > 0 && !slices.Contains(a.Enum, s) {
			c.fail(path, "%q is none of %v", s, a.Enum)
		}
	case "boolean_t":
		if _, ok := v.(bool); !ok {
			c.fail(path, "want a boolean, have %T", v)
		}
	case "integer_t", "long_t":
		n, ok := v.(json.Number)
		if !ok {
			c.fail(path, "want an integer (%s), have %T", a.Type, v)
			return
		}
		i, err := strconv.ParseInt(n.String(), 10, 64)
		if err != nil {
			c.fail(path, "want an integer (%s), have %s", a.Type, n)
			return
		}
		if len(a.Range) == 2 && (i < a.Range[0] || i > a.Range[1]) {
			c.fail(path, "%d outside %v", i, a.Range)
		}
		if len(a.Enum) > 0 && !slices.Contains(a.Enum, n.String()) {
			c.fail(path, "%s is none of %v", n, a.Enum)
		}
	case "float_t":
		if _, ok := v.(json.Number); !ok {
			c.fail(path, "want a number, have %T", v)
		}
	default:
		c.fail(path, "type %s unknown to the check", a.Type)
	}
}
