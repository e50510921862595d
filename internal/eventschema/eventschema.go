// Package eventschema checks event lines against docs/callscope-v1.schema.json,
// the JSON Schema of the callscope/v1 stream, for tests: the encoder, tail
// and the schema document must not drift apart.
package eventschema

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"sync"

	"github.com/santhosh-tekuri/jsonschema/v6"
)

// File is the schema's path from the repository's root.
const File = "docs/callscope-v1.schema.json"

var (
	once     sync.Once
	compiled *jsonschema.Schema
	loadErr  error
)

// Validate checks one event line (a JSON object, with or without its
// newline) against the schema.
func Validate(line []byte) error {
	once.Do(func() { compiled, loadErr = load() })
	if loadErr != nil {
		return loadErr
	}
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(line))
	if err != nil {
		return fmt.Errorf("not JSON: %w", err)
	}
	if err := compiled.Validate(v); err != nil {
		return fmt.Errorf("%s: %v", File, err)
	}
	return nil
}

func load() (*jsonschema.Schema, error) {
	root, err := repoRoot()
	if err != nil {
		return nil, err
	}
	path := filepath.Join(root, File)
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	doc, err := jsonschema.UnmarshalJSON(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	c := jsonschema.NewCompiler()
	if err := c.AddResource(path, doc); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	s, err := c.Compile(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return s, nil
}

// repoRoot is the nearest directory above the working directory (a test's
// package directory) that holds go.mod.
func repoRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("no go.mod above the working directory, so no %s", File)
		}
		dir = parent
	}
}
