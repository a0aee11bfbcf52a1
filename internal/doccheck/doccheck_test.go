package doccheck

import (
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// root is the repository root, relative to this package's directory.
const root = "../.."

// link is one markdown link or image: the page it is on, its line and its
// target as written.
type link struct {
	page   string
	line   int
	target string
}

var (
	// linkRE matches [text](target) and ![alt](target), with an optional
	// title after the target.
	linkRE = regexp.MustCompile(`\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)
	// codeSpanRE matches inline code, whose brackets are not links.
	codeSpanRE = regexp.MustCompile("`[^`]*`")
	// headingRE matches an ATX heading.
	headingRE = regexp.MustCompile(`^#{1,6}\s+(.*?)\s*#*\s*$`)
)

// pages returns README.md and every docs/*.md, as paths from the root.
func pages(t testing.TB) []string {
	t.Helper()
	docs, err := filepath.Glob(filepath.Join(root, "docs", "*.md"))
	if err != nil {
		t.Fatalf("list docs: %v", err)
	}
	if len(docs) == 0 {
		t.Fatalf("no docs/*.md under %s", root)
	}
	out := []string{"README.md"}
	for _, d := range docs {
		rel, err := filepath.Rel(root, d)
		if err != nil {
			t.Fatalf("docs page %s: %v", d, err)
		}
		out = append(out, rel)
	}
	return out
}

func read(t testing.TB, page string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(root, page))
	if err != nil {
		t.Fatalf("read %s: %v", page, err)
	}
	return string(b)
}

// proseLines calls fn for every line outside fenced code blocks, with
// inline code removed.
func proseLines(text string, fn func(n int, line string)) {
	outsideFences(text, func(n int, line string) { fn(n, codeSpanRE.ReplaceAllString(line, "")) })
}

// outsideFences calls fn for every line outside fenced code blocks.
func outsideFences(text string, fn func(n int, line string)) {
	fenced := false
	for i, line := range strings.Split(text, "\n") {
		trimmed := strings.TrimSpace(line)
		if strings.HasPrefix(trimmed, "```") || strings.HasPrefix(trimmed, "~~~") {
			fenced = !fenced
			continue
		}
		if !fenced {
			fn(i+1, line)
		}
	}
}

// links returns the links of a page, in order.
func links(page, text string) []link {
	var out []link
	proseLines(text, func(n int, line string) {
		for _, m := range linkRE.FindAllStringSubmatch(line, -1) {
			out = append(out, link{page: page, line: n, target: m[1]})
		}
	})
	return out
}

// anchors returns the heading anchors of a page as GitHub renders them,
// duplicates numbered -1, -2, ….
func anchors(text string) map[string]bool {
	out := map[string]bool{}
	seen := map[string]int{}
	outsideFences(text, func(_ int, line string) {
		m := headingRE.FindStringSubmatch(line)
		if m == nil {
			return
		}
		a := slug(m[1])
		if n := seen[a]; n > 0 {
			out[a+"-"+strconv.Itoa(n)] = true
		} else {
			out[a] = true
		}
		seen[a]++
	})
	return out
}

// slug is GitHub's anchor for a heading: lower case, letters, digits,
// '-' and '_' kept, spaces turned into '-', everything else dropped.
func slug(heading string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(heading) {
		switch {
		case unicode.IsLetter(r), unicode.IsDigit(r), r == '-', r == '_':
			b.WriteRune(r)
		case r == ' ':
			b.WriteByte('-')
		}
	}
	return b.String()
}

// external reports whether a target is outside the repository's files: a
// URL or a mail address.
func external(target string) bool {
	return strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:")
}

// resolve returns the page a relative target names, from the root, and its
// anchor ("" for none). A target of only an anchor names its own page.
func resolve(page, target string) (string, string) {
	path, anchor, _ := strings.Cut(target, "#")
	if path == "" {
		return page, anchor
	}
	return filepath.Clean(filepath.Join(filepath.Dir(page), path)), anchor
}

func TestSlug(t *testing.T) {
	tests := []struct{ heading, want string }{
		{"Configuration", "configuration"},
		{"Listing conflicts: `casualdb conflicts`", "listing-conflicts-casualdb-conflicts"},
		{"Waiting for W sites (quorum commit)", "waiting-for-w-sites-quorum-commit"},
		{"Known limits (see also README)", "known-limits-see-also-readme"},
		{"A five-minute tour", "a-five-minute-tour"},
	}
	for _, tt := range tests {
		if got := slug(tt.heading); got != tt.want {
			t.Errorf("slug(%q): got %q, want %q", tt.heading, got, tt.want)
		}
	}
}

func TestAnchors_Duplicates(t *testing.T) {
	got := anchors("# A\n\n```\n# not a heading\n```\n## A\n### B ###\n")
	for _, want := range []string{"a", "a-1", "b"} {
		if !got[want] {
			t.Errorf("anchors: %v lacks %q", got, want)
		}
	}
	if got["not-a-heading"] {
		t.Errorf("anchors: %v has a heading from a code block", got)
	}
}

func TestLinks_SkipsCode(t *testing.T) {
	text := "see [a](a.md) and `[b](b.md)`\n```\n[c](c.md)\n```\n![d](img/d.svg \"title\")\n"
	var got []string
	for _, l := range links("x.md", text) {
		got = append(got, l.target)
	}
	if want := []string{"a.md", "img/d.svg"}; !slices.Equal(got, want) {
		t.Errorf("links: got %q, want %q", got, want)
	}
}

// TestREADME_LinksEveryDocPage checks that README.md links every page of
// docs/: the front door leads everywhere.
func TestREADME_LinksEveryDocPage(t *testing.T) {
	linked := map[string]bool{}
	for _, l := range links("README.md", read(t, "README.md")) {
		if !external(l.target) {
			path, _ := resolve(l.page, l.target)
			linked[path] = true
		}
	}
	for _, page := range pages(t) {
		if page != "README.md" && !linked[page] {
			t.Errorf("README.md does not link %s", page)
		}
	}
}

// TestDocs_RelativeLinksResolve checks that every relative link of
// README.md and docs/*.md names an existing file, and that an anchor into
// a markdown page names one of its headings.
func TestDocs_RelativeLinksResolve(t *testing.T) {
	texts := map[string]string{}
	for _, page := range pages(t) {
		texts[page] = read(t, page)
	}
	for _, page := range pages(t) {
		for _, l := range links(page, texts[page]) {
			if external(l.target) {
				continue
			}
			path, anchor := resolve(l.page, l.target)
			if rel, err := filepath.Rel(".", path); err != nil || strings.HasPrefix(rel, "..") {
				t.Errorf("%s:%d: link %q leaves the repository", l.page, l.line, l.target)
				continue
			}
			if _, err := os.Stat(filepath.Join(root, path)); err != nil {
				t.Errorf("%s:%d: link %q: no file %s", l.page, l.line, l.target, path)
				continue
			}
			if anchor == "" || !strings.HasSuffix(path, ".md") {
				continue
			}
			text, ok := texts[path]
			if !ok {
				text = read(t, path)
			}
			if !anchors(text)[anchor] {
				t.Errorf("%s:%d: link %q: %s has no heading with anchor #%s", l.page, l.line, l.target, path, anchor)
			}
		}
	}
}
