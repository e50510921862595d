package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/kube-openapi/pkg/validation/spec"
	"k8s.io/kube-openapi/pkg/validation/strfmt"
	"k8s.io/kube-openapi/pkg/validation/validate"

	"github.com/callscope/callscope/scope"
)

// crdSchema is the openAPIV3Schema of the CallScope CRD, unstructured.
func crdSchema(t *testing.T) map[string]any {
	t.Helper()
	crd := find(t, manifests(t), "CustomResourceDefinition")
	what := crd.String()
	versions := field[[]any](t, crd.obj, what, "spec", "versions")
	if len(versions) != 1 {
		t.Fatalf("%s: want one version, v1alpha1", what)
	}
	return field[map[string]any](t, versions[0], what, "schema", "openAPIV3Schema")
}

func TestCRD(t *testing.T) {
	crd := find(t, manifests(t), "CustomResourceDefinition")
	what := crd.String()
	apiVersion, _, _ := strings.Cut(scope.APIVersion, "/")
	for _, c := range []struct {
		path []string
		want string
	}{
		{[]string{"metadata", "name"}, "callscopes." + apiVersion},
		{[]string{"spec", "group"}, apiVersion},
		{[]string{"spec", "scope"}, "Cluster"},
		{[]string{"spec", "names", "kind"}, scope.Kind},
		{[]string{"spec", "names", "plural"}, "callscopes"},
		{[]string{"spec", "names", "singular"}, "callscope"},
		{[]string{"spec", "names", "listKind"}, scope.Kind + "List"},
	} {
		if got := field[string](t, crd.obj, what, c.path...); got != c.want {
			t.Errorf("%s: %s is %q, want %q", what, strings.Join(c.path, "."), got, c.want)
		}
	}
	versions := field[[]any](t, crd.obj, what, "spec", "versions")
	if len(versions) != 1 {
		t.Fatalf("%s: want one version", what)
	}
	v := versions[0]
	if name := field[string](t, v, what, "name"); "callscope.dev/"+name != scope.APIVersion {
		t.Errorf("%s: version %s, want the file format's %s", what, name, scope.APIVersion)
	}
	if !field[bool](t, v, what, "served") || !field[bool](t, v, what, "storage") {
		t.Errorf("%s: the version must be served and stored", what)
	}
	if allowed := []string{"apiVersion", "kind", "metadata", "spec"}; !onlyKeys(crd.obj, allowed) {
		t.Errorf("%s: top-level fields other than %v", what, allowed)
	}

	for _, p := range structuralProblems("openAPIV3Schema", crdSchema(t), levelRoot) {
		t.Errorf("%s: %s", what, p)
	}
}

// The rules an API server applies to a CRD schema before it takes it
// (apiextensions-apiserver: structural schemas, and the validation of
// JSONSchemaProps), restated for the parts of OpenAPI this schema uses.

type schemaLevel int

const (
	levelRoot schemaLevel = iota
	levelField
	levelItems
)

// structuralKeys are the keys a CRD schema node may hold.
var structuralKeys = []string{
	"type", "description", "title", "properties", "required", "items", "additionalProperties",
	"enum", "pattern", "format", "minLength", "maxLength", "minimum", "maximum",
	"exclusiveMinimum", "exclusiveMaximum", "multipleOf", "minItems", "maxItems",
	"minProperties", "maxProperties", "default", "nullable", "example",
	"anyOf", "allOf", "oneOf", "not",
	"x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
	"x-kubernetes-embedded-resource", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
	"x-kubernetes-map-type", "x-kubernetes-validations",
}

// nestedForbidden are the keys a value validation under anyOf, allOf,
// oneOf or not must not hold.
var nestedForbidden = []string{
	"type", "additionalProperties", "default", "description", "title", "nullable",
	"x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields",
	"x-kubernetes-embedded-resource", "x-kubernetes-list-type", "x-kubernetes-list-map-keys",
	"x-kubernetes-map-type", "x-kubernetes-validations",
}

var intOrStringAnyOf = []any{map[string]any{"type": "integer"}, map[string]any{"type": "string"}}

func structuralProblems(path string, s map[string]any, level schemaLevel) []string {
	var out []string
	bad := func(format string, args ...any) {
		out = append(out, path+": "+fmt.Sprintf(format, args...))
	}
	for _, k := range sortedKeys(s) {
		if !slices.Contains(structuralKeys, k) {
			bad("%s is not allowed in a CRD schema", k)
		}
	}
	if s["uniqueItems"] == true {
		bad("uniqueItems cannot be true")
	}

	typ, _ := s["type"].(string)
	intOrString := s["x-kubernetes-int-or-string"] == true
	preserve := s["x-kubernetes-preserve-unknown-fields"] == true
	switch {
	case intOrString && typ != "":
		bad("type must be empty with x-kubernetes-int-or-string")
	case intOrString && s["anyOf"] != nil && !reflect.DeepEqual(s["anyOf"], intOrStringAnyOf):
		bad("with x-kubernetes-int-or-string, anyOf may only be [{type: integer}, {type: string}]")
	case typ == "" && !intOrString && !preserve:
		bad("type must be set")
	case level == levelRoot && typ != "object":
		bad("type must be object at the root")
	}

	props, _ := s["properties"].(map[string]any)
	switch ap := s["additionalProperties"].(type) {
	case nil:
	case bool:
		if !ap {
			bad("additionalProperties cannot be false")
		}
	case map[string]any:
		if props != nil {
			bad("properties and additionalProperties are mutually exclusive")
		}
		if level == levelRoot {
			bad("additionalProperties is not allowed at the root")
		}
		out = append(out, structuralProblems(path+".additionalProperties", ap, levelField)...)
	}
	if typ == "array" {
		items, ok := s["items"].(map[string]any)
		if !ok {
			bad("an array needs items, one schema")
		} else {
			out = append(out, structuralProblems(path+".items", items, levelItems)...)
		}
	}
	for _, k := range sortedKeys(props) {
		p, ok := props[k].(map[string]any)
		if !ok {
			bad("properties.%s is not a schema", k)
			continue
		}
		if level == levelRoot && k == "metadata" {
			for _, mk := range sortedKeys(p) {
				if mk != "type" {
					bad("metadata may restrict name and generateName only, not %s", mk)
				}
			}
			continue
		}
		out = append(out, structuralProblems(path+".properties."+k, p, levelField)...)
	}
	if req, ok := s["required"].([]any); ok {
		for _, r := range req {
			if name, _ := r.(string); props[name] == nil {
				bad("required names %v, which is not a property", r)
			}
		}
	}

	for _, junctor := range []string{"anyOf", "allOf", "oneOf"} {
		list, _ := s[junctor].([]any)
		if junctor == "anyOf" && intOrString {
			continue
		}
		for i, n := range list {
			nested, ok := n.(map[string]any)
			if !ok {
				bad("%s[%d] is not a schema", junctor, i)
				continue
			}
			out = append(out, nestedProblems(fmt.Sprintf("%s.%s[%d]", path, junctor, i), nested, s)...)
		}
	}
	if not, ok := s["not"].(map[string]any); ok {
		out = append(out, nestedProblems(path+".not", not, s)...)
	}
	return out
}

// nestedProblems checks a value validation under a junctor against the
// structural schema it sits in: it may name only fields that schema names.
func nestedProblems(path string, n, structural map[string]any) []string {
	var out []string
	bad := func(format string, args ...any) {
		out = append(out, path+": "+fmt.Sprintf(format, args...))
	}
	for _, k := range sortedKeys(n) {
		if slices.Contains(nestedForbidden, k) {
			bad("%s is not allowed under a junctor", k)
		} else if !slices.Contains(structuralKeys, k) {
			bad("%s is not allowed in a CRD schema", k)
		}
	}
	sprops, _ := structural["properties"].(map[string]any)
	props, _ := n["properties"].(map[string]any)
	for _, k := range sortedKeys(props) {
		sp, ok := sprops[k].(map[string]any)
		if !ok {
			bad("properties.%s is not a property of the schema around it", k)
			continue
		}
		np, _ := props[k].(map[string]any)
		out = append(out, nestedProblems(path+".properties."+k, np, sp)...)
	}
	if items, ok := n["items"].(map[string]any); ok {
		sitems, ok := structural["items"].(map[string]any)
		if !ok {
			bad("items where the schema around it has none")
		} else {
			out = append(out, nestedProblems(path+".items", items, sitems)...)
		}
	}
	if req, ok := n["required"].([]any); ok {
		for _, r := range req {
			if name, _ := r.(string); sprops[name] == nil {
				bad("required names %v, which is not a property of the schema around it", r)
			}
		}
	}
	for _, junctor := range []string{"anyOf", "allOf", "oneOf"} {
		list, _ := n[junctor].([]any)
		for i, m := range list {
			if nested, ok := m.(map[string]any); ok {
				out = append(out, nestedProblems(fmt.Sprintf("%s.%s[%d]", path, junctor, i), nested, structural)...)
			}
		}
	}
	return out
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// crdValidator validates objects against the CRD schema as the API server
// does: x-kubernetes-int-or-string becomes the type [integer, string], and
// fields the schema does not name are errors, as they are under the
// strict field validation kubectl asks for by default (the schema itself
// may not say additionalProperties: false).
func crdValidator(t *testing.T) *validate.SchemaValidator {
	t.Helper()
	b, err := json.Marshal(crdSchema(t))
	if err != nil {
		t.Fatal(err)
	}
	var s spec.Schema
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatal(err)
	}
	var prepare func(s *spec.Schema, root bool)
	prepare = func(s *spec.Schema, root bool) {
		if v, _ := s.Extensions.GetBool("x-kubernetes-int-or-string"); v {
			s.Type = spec.StringOrArray{"integer", "string"}
		}
		for k, p := range s.Properties {
			if root && k == "metadata" {
				continue // ObjectMeta: the API server's own validation
			}
			prepare(&p, false)
			s.Properties[k] = p
		}
		if s.Items != nil && s.Items.Schema != nil {
			prepare(s.Items.Schema, false)
		}
		if s.AdditionalProperties != nil && s.AdditionalProperties.Schema != nil {
			prepare(s.AdditionalProperties.Schema, false)
		}
		preserve, _ := s.Extensions.GetBool("x-kubernetes-preserve-unknown-fields")
		if len(s.Properties) > 0 && s.AdditionalProperties == nil && !preserve {
			s.AdditionalProperties = &spec.SchemaOrBool{Allows: false}
		}
	}
	prepare(&s, true)
	return validate.NewSchemaValidator(&s, nil, "", strfmt.Default)
}

// policyFile is a file of CallScopes, or the text of one in a ConfigMap.
type policyFile struct {
	name string
	data []byte
}

// shippedPolicies are the policies the deployment files carry, and the
// file format's own example of every field.
func shippedPolicies(t *testing.T) []policyFile {
	t.Helper()
	var out []policyFile
	paths, _ := filepath.Glob("examples/*.yaml")
	paths = append(paths, "vagrant/demo-client.yaml", "../scope/testdata/valid.yaml")
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, policyFile{p, b})
	}
	cm := decodeStrict[*corev1.ConfigMap](t, find(t, manifests(t), "ConfigMap"))
	if len(cm.Data) == 0 {
		t.Fatalf("ConfigMap %s holds no policy", cm.Name)
	}
	for _, key := range slices.Sorted(func(yield func(string) bool) {
		for k := range cm.Data {
			if !yield(k) {
				return
			}
		}
	}) {
		if !strings.HasSuffix(key, ".yaml") {
			t.Errorf("ConfigMap %s: key %s: the agent reads only *.yaml and *.yml files", cm.Name, key)
		}
		out = append(out, policyFile{"configmap " + cm.Name + ":" + key, []byte(cm.Data[key])})
	}
	return out
}

// documents splits a policy file into its non-empty documents.
func documents(t *testing.T, f policyFile) [][]byte {
	t.Helper()
	tmp := filepath.Join(t.TempDir(), "policy.yaml")
	if err := os.WriteFile(tmp, f.data, 0o644); err != nil {
		t.Fatal(err)
	}
	return yamlDocs(t, tmp)
}

// TestShippedPolicies checks every policy that ships with the deployment
// files twice: as `callscope policy check` reads it, and as the API server
// would take it as a CallScope object.
func TestShippedPolicies(t *testing.T) {
	v := crdValidator(t)
	for _, f := range shippedPolicies(t) {
		t.Run(f.name, func(t *testing.T) {
			policies, err := scope.Parse(f.name, f.data)
			if err != nil {
				t.Fatalf("policy check: %v", err)
			}
			docs := documents(t, f)
			if len(docs) != len(policies) {
				t.Fatalf("%d documents, %d policies", len(docs), len(policies))
			}
			for i, doc := range docs {
				if res := v.Validate(toObject(t, doc)); !res.IsValid() {
					t.Errorf("%s: CallScope %s: the CRD schema refuses it: %v", f.name, policies[i].Name, res.Errors)
				}
			}
		})
	}
}

// schemaCases are CallScopes that both the agent and the CRD must refuse.
// Each replaces spec in an otherwise valid document, unless it starts with
// "apiVersion".
var schemaCases = []struct{ name, doc string }{
	{"unknown top-level field", "apiVersion: callscope.dev/v1alpha1\nkind: CallScope\nmetadata: {name: t}\nspec: {subject: {namespace: a}}\nstatus: {}"},
	{"no spec", "apiVersion: callscope.dev/v1alpha1\nkind: CallScope\nmetadata: {name: t}"},
	{"unknown field in spec", "{subject: {namespace: a}, egres: []}"},
	{"unknown field in subject", "{subject: {namespace: a, serviceaccount: b}}"},
	{"unknown field in a rule", "{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8}], port: [443]}]}"},
	{"unknown field in a destination", "{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8, host: a.example}]}]}"},
	{"no subject", "{egress: []}"},
	{"a mode that is none", "{mode: dryrun, subject: {namespace: a}}"},
	{"a mode in upper case", "{mode: Audit, subject: {namespace: a}}"},
	{"a mode that is not a string", "{mode: true, subject: {namespace: a}}"},
	{"an empty subject", "{subject: {}}"},
	{"empty podLabels alone", "{subject: {podLabels: {}}}"},
	{"a label value that is not a string", "{subject: {podLabels: {tier: 1}}}"},
	{"an upper-case namespace", "{subject: {namespace: Payments}}"},
	{"a service account with _", "{subject: {serviceAccount: billing_svc}}"},
	{"an empty exe glob", `{subject: {exe: ""}}`},
	{"** in a glob", `{subject: {exe: "/usr/**/x"}}`},
	{"egress not a list", "{subject: {namespace: a}, egress: {to: []}}"},
	{"a rule without to", "{subject: {namespace: a}, egress: [{ports: [443]}]}"},
	{"an empty to", "{subject: {namespace: a}, egress: [{to: []}]}"},
	{"an empty destination", "{subject: {namespace: a}, egress: [{to: [{}]}]}"},
	{"cidr and dns in one destination", "{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8, dns: a.example}]}]}"},
	{"a cidr that is a name", "{subject: {namespace: a}, egress: [{to: [{cidr: example.com}]}]}"},
	{"dns matching every name", `{subject: {namespace: a}, egress: [{to: [{dns: "**"}]}]}`},
	{"a * inside a label", `{subject: {namespace: a}, egress: [{to: [{sni: "api.*x.example"}]}]}`},
	{"an empty label", `{subject: {namespace: a}, egress: [{to: [{dns: "a..example"}]}]}`},
	{"** after the first label", `{subject: {namespace: a}, egress: [{to: [{dns: "a.**.example"}]}]}`},
	{"port 0", "{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8}], ports: [0]}]}"},
	{"port 65536", "{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8}], ports: [65536]}]}"},
	{"port string 65536", `{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8}], ports: ["65536"]}]}`},
	{"a range without an end", `{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8}], ports: ["80-"]}]}`},
	{"a port by name", "{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8}], ports: [https]}]}"},
	{"a fractional port", "{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8}], ports: [443.5]}]}"},
	{"a boolean port", "{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8}], ports: [true]}]}"},
	{"no ports listed", "{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8}], ports: []}]}"},
	{"udp", "{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8}], protocol: udp}]}"},
	{"a service without its namespace", "{subject: {namespace: a}, egress: [{to: [{service: ledger}]}]}"},
	{"a service name starting with a digit", "{subject: {namespace: a}, egress: [{to: [{service: payments/1ledger}]}]}"},
	{"an upper-case callee namespace", "{subject: {namespace: a}, egress: [{to: [{namespace: Shared}]}]}"},
	{"a callee spiffeID that is not one", `{subject: {namespace: a}, egress: [{to: [{spiffeID: "cluster.local/ns/a/sa/b"}]}]}`},
	{"service and namespace in one destination", "{subject: {namespace: a}, egress: [{to: [{service: a/b, namespace: a}]}]}"},
}

// celCases are CallScopes the agent refuses and the API server refuses by
// the CRD's CEL rules, which a plain OpenAPI validator does not run.
var celCases = []struct{ name, doc string }{
	{"an address out of range", "{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.300}]}]}"},
	{"host bits set", "{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.1/8}]}]}"},
	{"host bits set in IPv6", `{subject: {namespace: a}, egress: [{to: [{cidr: "2001:db8::1/32"}]}]}`},
	{"a prefix longer than the address", "{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/33}]}]}"},
	{"an IPv6 address with too many groups", "{subject: {namespace: a}, egress: [{to: [{cidr: \"1:2:3:4:5:6:7:8:9\"}]}]}"},
}

// schemaGaps are CallScopes the agent refuses and the CRD cannot: the API
// accepts them, and the agent's check is the one that catches them. A case
// the CRD learns to refuse belongs in schemaCases.
var schemaGaps = []struct{ name, doc string }{
	{"an unclosed bracket in a glob", `{subject: {exe: "/app/[billing"}}`},
	{"a range that runs backwards", `{subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8}], ports: ["90-80"]}]}`},
}

func caseDoc(doc string) string {
	if strings.HasPrefix(doc, "apiVersion") {
		return doc
	}
	return "apiVersion: callscope.dev/v1alpha1\nkind: CallScope\nmetadata: {name: t}\nspec: " + doc + "\n"
}

func TestCRDSchemaRefuses(t *testing.T) {
	v := crdValidator(t)
	for _, c := range schemaCases {
		t.Run(c.name, func(t *testing.T) {
			doc := caseDoc(c.doc)
			if _, err := scope.Parse("case.yaml", []byte(doc)); err == nil {
				t.Errorf("the agent accepts it:\n%s", doc)
			}
			if res := v.Validate(toObject(t, []byte(doc))); res.IsValid() {
				t.Errorf("the CRD schema accepts it:\n%s", doc)
			}
		})
	}
	for _, c := range schemaGaps {
		t.Run("gap/"+c.name, func(t *testing.T) {
			doc := caseDoc(c.doc)
			if _, err := scope.Parse("case.yaml", []byte(doc)); err == nil {
				t.Errorf("the agent accepts it:\n%s", doc)
			}
			if res := v.Validate(toObject(t, []byte(doc))); !res.IsValid() {
				t.Errorf("the CRD schema now refuses it (%v): move the case to schemaCases", res.Errors)
			}
		})
	}
}

// acceptCases are forms a valid field may take beyond the shipped
// examples.
var acceptCases = []string{
	`{subject: {podLabels: {app: billing, tier: "1"}}}`,
	`{mode: audit, subject: {namespace: a}, egress: [{to: [{cidr: 10.0.0.0/8}]}]}`,
	`{mode: enforce, subject: {namespace: a}}`,
	`{subject: {spiffeID: "spiffe://cluster.local/ns/*/sa/*"}}`,
	`{subject: {cgroup: "/system.slice/*"}, egress: [{to: [{cidr: "::/0"}, {cidr: 192.0.2.7}, {cidr: "2001:db8::1"}], ports: [1, 65535, "1-65535", "0443"]}]}`,
	`{subject: {systemdUnit: "backup?.service"}, egress: [{to: [{dns: "**.amazonaws.com"}, {sni: "API.Stripe.com."}], protocol: TCP}]}`,
	`{subject: {namespace: a}, egress: [{to: [{service: payments/ledger}, {namespace: kube-system}, {spiffeID: "spiffe://cluster.local/ns/*/sa/ledger"}], ports: [8443]}]}`,
}

func TestCRDSchemaAccepts(t *testing.T) {
	v := crdValidator(t)
	for _, doc := range acceptCases {
		doc = caseDoc(doc)
		if _, err := scope.Parse("case.yaml", []byte(doc)); err != nil {
			t.Errorf("the agent refuses it: %v\n%s", err, doc)
		}
		if res := v.Validate(toObject(t, []byte(doc))); !res.IsValid() {
			t.Errorf("the CRD schema refuses it: %v\n%s", res.Errors, doc)
		}
	}
}
