//go:build ignore

// Command gen derives schema-<version>.json, the compact part of the OCSF
// schema that the exporter's OCSF records are checked against: the classes
// the exporter writes, with their base classes and profiles, and every
// object its records hold, recursively, each attribute with its type,
// requirement, enum values and the profile it comes from.
//
// Run it on a checkout of github.com/ocsf/ocsf-schema at the pinned release:
//
//	git clone --branch 1.8.0 https://github.com/ocsf/ocsf-schema /tmp/ocsf-schema
//	go run ./exporter/testdata/ocsf/gen.go /tmp/ocsf-schema
//
// (or, from a bare mirror: git --git-dir=MIRROR archive 1.8.0 | tar -x -C /tmp/ocsf-schema).
// It writes exporter/testdata/ocsf/schema-<version>.json. When the exporter
// starts writing an object not listed in objects below, add it and run this
// again: the check fails on an object the fixture does not hold.
package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

// classes are the event classes the exporter writes, by path under events/.
var classes = []string{"network/network_activity", "system/event_log_activity"}

// objects are those whose attributes the fixture lists: every object the
// exporter writes.
var objects = []string{
	"metadata", "product", "device", "network_endpoint", "network_connection_info",
	"actor", "process", "file", "user", "container", "tls", "ja4_fingerprint", "policy",
}

type rawAttr map[string]json.RawMessage

type rawDoc struct {
	Name        string                     `json:"name"`
	UID         *int                       `json:"uid"`
	Extends     string                     `json:"extends"`
	Category    string                     `json:"category"`
	Attributes  map[string]json.RawMessage `json:"attributes"`
	Constraints struct {
		AtLeastOne []string `json:"at_least_one"`
		JustOne    []string `json:"just_one"`
	} `json:"constraints"`
}

// Attr is an attribute as the fixture gives it.
type Attr struct {
	Type        string   `json:"type"`             // string_t, integer_t, …, "object" (any object), or an object's name
	Base        string   `json:"base,omitempty"`   // the primitive type under a derived one: port_t is integer_t
	Object      bool     `json:"object,omitempty"` // Type names an object
	Array       bool     `json:"array,omitempty"`
	Requirement string   `json:"requirement"`
	Enum        []string `json:"enum,omitempty"`
	Range       []int64  `json:"range,omitempty"`
	MaxLen      int      `json:"max_len,omitempty"`
	Profile     string   `json:"profile,omitempty"` // valid only where metadata.profiles names it
}

// Type is a class or an object.
type Type struct {
	UID         int             `json:"uid,omitempty"`
	CategoryUID int             `json:"category_uid,omitempty"`
	Attributes  map[string]Attr `json:"attributes"`
	AtLeastOne  []string        `json:"at_least_one,omitempty"`
	JustOne     []string        `json:"just_one,omitempty"`
}

type Fixture struct {
	Version string          `json:"version"`
	Source  string          `json:"source"`
	Classes map[string]Type `json:"classes"`
	Objects map[string]Type `json:"objects"`
}

var root string

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: go run ./exporter/testdata/ocsf/gen.go OCSF_SCHEMA_CHECKOUT")
		os.Exit(2)
	}
	root = os.Args[1]
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func readJSON(path string, v any) error {
	b, err := os.ReadFile(filepath.Join(root, path))
	if err != nil {
		return err
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	return nil
}

type dictType struct {
	Type   string  `json:"type"`
	MaxLen int     `json:"max_len"`
	Range  []int64 `json:"range"`
}

var (
	dict  map[string]rawAttr
	types map[string]dictType
)

func run() error {
	var v struct {
		Version string `json:"version"`
	}
	if err := readJSON("version.json", &v); err != nil {
		return err
	}
	var d struct {
		Attributes map[string]rawAttr `json:"attributes"`
		Types      struct {
			Attributes map[string]dictType `json:"attributes"`
		} `json:"types"`
	}
	if err := readJSON("dictionary.json", &d); err != nil {
		return err
	}
	dict, types = d.Attributes, d.Types.Attributes
	var cats struct {
		Attributes map[string]struct {
			UID int `json:"uid"`
		} `json:"attributes"`
	}
	if err := readJSON("categories.json", &cats); err != nil {
		return err
	}

	f := Fixture{
		Version: v.Version,
		Source:  "github.com/ocsf/ocsf-schema " + v.Version + ", derived by exporter/testdata/ocsf/gen.go",
		Classes: map[string]Type{},
		Objects: map[string]Type{},
	}
	for _, c := range classes {
		layers, err := chain("events", c+".json")
		if err != nil {
			return err
		}
		t, err := compile(layers)
		if err != nil {
			return fmt.Errorf("class %s: %w", c, err)
		}
		leaf := layers[len(layers)-1]
		category := ""
		for _, l := range layers {
			if l.Category != "" {
				category = l.Category
			}
		}
		cat, ok := cats.Attributes[category]
		if !ok || leaf.UID == nil {
			return fmt.Errorf("class %s: no category or uid", c)
		}
		t.CategoryUID = cat.UID
		t.UID = cat.UID*1000 + *leaf.UID
		// The schema server derives these enums; the files leave them open.
		pin(&t, "class_uid", []string{strconv.Itoa(t.UID)})
		pin(&t, "category_uid", []string{strconv.Itoa(t.CategoryUID)})
		var typeUIDs []string
		for _, a := range t.Attributes["activity_id"].Enum {
			n, err := strconv.Atoi(a)
			if err != nil {
				return fmt.Errorf("class %s: activity_id %q", c, a)
			}
			typeUIDs = append(typeUIDs, strconv.Itoa(t.UID*100+n))
		}
		pin(&t, "type_uid", typeUIDs)
		f.Classes[leaf.Name] = t
	}
	for _, o := range objects {
		layers, err := chain("objects", o+".json")
		if err != nil {
			return err
		}
		t, err := compile(layers)
		if err != nil {
			return fmt.Errorf("object %s: %w", o, err)
		}
		f.Objects[o] = t
	}
	b, err := json.MarshalIndent(f, "", " ")
	if err != nil {
		return err
	}
	out := filepath.Join("exporter", "testdata", "ocsf", "schema-"+v.Version+".json")
	return os.WriteFile(out, append(b, '\n'), 0o644)
}

// chain reads a class or object and what it extends, base first.
func chain(dir, file string) ([]rawDoc, error) {
	var layers []rawDoc
	path := filepath.Join(dir, file)
	for {
		var doc rawDoc
		if err := readJSON(path, &doc); err != nil {
			return nil, err
		}
		layers = append([]rawDoc{doc}, layers...)
		if doc.Extends == "" || doc.Extends == "object" && dir == "objects" {
			return layers, nil
		}
		// A class extends a class of its folder, or base_event.
		next, err := find(dir, doc.Extends+".json")
		if err != nil {
			return nil, fmt.Errorf("%s extends %s: %w", path, doc.Extends, err)
		}
		path = next
	}
}

func find(dir, name string) (string, error) {
	var found string
	err := filepath.WalkDir(filepath.Join(root, dir), func(p string, e os.DirEntry, err error) error {
		if err == nil && !e.IsDir() && e.Name() == name {
			found, _ = filepath.Rel(root, p)
		}
		return err
	})
	if err == nil && found == "" {
		err = os.ErrNotExist
	}
	return found, err
}

// compile merges the layers' attributes, each layer's included profiles
// first, then its own, over the dictionary's definitions.
func compile(layers []rawDoc) (Type, error) {
	entries := map[string]rawAttr{} // merged layer entries
	profile := map[string]string{}
	t := Type{Attributes: map[string]Attr{}}
	for _, l := range layers {
		if inc, ok := l.Attributes["$include"]; ok {
			var files []string
			if err := json.Unmarshal(inc, &files); err != nil {
				return t, err
			}
			for _, file := range files {
				var p rawDoc
				if err := readJSON(file, &p); err != nil {
					return t, err
				}
				for name, raw := range p.Attributes {
					if err := merge(entries, name, raw); err != nil {
						return t, err
					}
					if _, own := l.Attributes[name]; !own {
						profile[name] = p.Name
					}
				}
			}
		}
		for name, raw := range l.Attributes {
			if name == "$include" {
				continue
			}
			if err := merge(entries, name, raw); err != nil {
				return t, err
			}
			delete(profile, name)
		}
		if c := l.Constraints.AtLeastOne; c != nil {
			t.AtLeastOne = c
		}
		if c := l.Constraints.JustOne; c != nil {
			t.JustOne = c
		}
	}
	for name, e := range entries {
		d, ok := dict[name]
		if !ok {
			return t, fmt.Errorf("attribute %s is not in the dictionary", name)
		}
		all := rawAttr{}
		maps.Copy(all, d)
		for k, v := range e {
			if k == "enum" {
				continue
			}
			all[k] = v
		}
		a := Attr{Requirement: "optional", Profile: profile[name]}
		str(all, "type", &a.Type)
		str(all, "requirement", &a.Requirement)
		if raw, ok := all["is_array"]; ok {
			json.Unmarshal(raw, &a.Array)
		}
		enum := map[string]bool{}
		for _, src := range []rawAttr{d, e} {
			var m map[string]json.RawMessage
			if raw, ok := src["enum"]; ok {
				if err := json.Unmarshal(raw, &m); err != nil {
					return t, fmt.Errorf("%s: enum: %w", name, err)
				}
			}
			for k := range m {
				enum[k] = true
			}
		}
		a.Enum = slices.SortedFunc(maps.Keys(enum), func(x, y string) int {
			nx, ex := strconv.Atoi(x)
			ny, ey := strconv.Atoi(y)
			if ex == nil && ey == nil {
				return nx - ny
			}
			return strings.Compare(x, y)
		})
		switch {
		case a.Type == "object":
		case strings.HasSuffix(a.Type, "_t"):
			dt, ok := types[a.Type]
			if !ok {
				return t, fmt.Errorf("%s: unknown type %s", name, a.Type)
			}
			a.Base, a.Range, a.MaxLen = dt.Type, dt.Range, dt.MaxLen
			for a.Base != "" && types[a.Base].Type != "" {
				a.Base = types[a.Base].Type
			}
		default:
			a.Object = true
		}
		t.Attributes[name] = a
	}
	return t, nil
}

func pin(t *Type, name string, enum []string) {
	a := t.Attributes[name]
	a.Enum = enum
	t.Attributes[name] = a
}

func str(a rawAttr, key string, dst *string) {
	if raw, ok := a[key]; ok {
		json.Unmarshal(raw, dst)
	}
}

// merge lays raw over what entries holds of name, key by key, enum
// values added to those before.
func merge(entries map[string]rawAttr, name string, raw json.RawMessage) error {
	var e rawAttr
	if err := json.Unmarshal(raw, &e); err != nil {
		return fmt.Errorf("%s: %w", name, err)
	}
	old, ok := entries[name]
	if !ok {
		entries[name] = e
		return nil
	}
	for k, v := range e {
		if k == "enum" {
			if prev, ok := old["enum"]; ok {
				var a, b map[string]json.RawMessage
				json.Unmarshal(prev, &a)
				json.Unmarshal(v, &b)
				maps.Copy(a, b)
				v, _ = json.Marshal(a)
			}
		}
		old[k] = v
	}
	return nil
}
