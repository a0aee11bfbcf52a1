// Package doccheck holds only tests: they keep the documentation's links
// true. README.md is the front door and must link every page of docs/;
// every relative link in README.md and docs/*.md must name a file that
// exists and, when it names a heading of a markdown file, a heading that
// exists. The pages are read relative to the repository root (../../), so
// the tests run from this directory as go test runs them.
//
// The configuration table of README.md is checked elsewhere, next to the
// configuration it documents (cmd/casualdb/configdoc_test.go).
package doccheck
