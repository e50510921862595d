//go:build !race

// Package israce tells tests whether the race detector is on: it changes
// how much memory the runtime keeps and how fast code runs, so the tests
// that measure either skip under it.
package israce

// Enabled says the race detector is on.
const Enabled = false
