package scope

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Load reads CallScope files and folders. A folder is read recursively for
// *.yaml and *.yml files, in name order, skipping hidden files and folders;
// a file named outright is read whatever its name. Names must be unique
// across everything read. Problems with the policies come back together as
// an *Errors, and then no policy is returned; a file or folder that cannot
// be read is another error.
func Load(paths ...string) ([]Policy, error) {
	var files []string
	seen := map[string]bool{}
	for _, path := range paths {
		found, err := policyFiles(path)
		if err != nil {
			return nil, fmt.Errorf("load policies: %w", err)
		}
		for _, f := range found {
			// A file can be named both outright and through its folder.
			if key := filepath.Clean(f); !seen[key] {
				seen[key] = true
				files = append(files, f)
			}
		}
	}

	var policies []Policy
	var errs Errors
	names := map[string]Position{}
	for _, file := range files {
		data, err := readFile(file)
		if err != nil {
			return nil, fmt.Errorf("load policies: %w", err)
		}
		found, ferrs := parseFile(file, data, names)
		policies = append(policies, found...)
		errs = append(errs, ferrs...)
	}
	if len(errs) > 0 {
		return nil, &errs
	}
	return policies, nil
}

// policyFiles lists the policy files a path stands for.
func policyFiles(root string) ([]string, error) {
	info, err := os.Stat(root)
	if err != nil {
		return nil, err
	}
	if !info.IsDir() {
		return []string{root}, nil
	}
	// With a trailing separator, a root that is a link to a folder is
	// walked as the folder; WalkDir would otherwise see just a link.
	top := strings.TrimSuffix(root, string(filepath.Separator)) + string(filepath.Separator)
	var files []string
	err = filepath.WalkDir(top, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if path == top {
			return nil
		}
		// Hidden entries are editor and VCS files, and the ..data folder
		// through which Kubernetes swaps a mounted ConfigMap: its files are
		// read once, through their visible links.
		if strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() || !isYAML(d.Name()) {
			return nil
		}
		if d.Type()&fs.ModeSymlink != 0 {
			target, err := os.Stat(path)
			if err != nil {
				return err
			}
			if !target.Mode().IsRegular() {
				return nil
			}
		} else if !d.Type().IsRegular() {
			return nil
		}
		files = append(files, path)
		return nil
	})
	return files, err
}

func isYAML(name string) bool {
	ext := filepath.Ext(name)
	return ext == ".yaml" || ext == ".yml"
}

// readFile reads a file, but no more of it than it takes parseFile to see
// it is too large, whatever size the file claims: it may be a device or
// still growing.
func readFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", name, err)
	}
	return data, nil
}
