package peakdesk_test

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"unicode"
)

// mdLink matches a Markdown link or image target: [text](target) or
// ![alt](target), the target up to the first space or closing parenthesis.
var mdLink = regexp.MustCompile(`!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)`)

// Every relative link and image in the README and docs/ leads to a file of
// the repository, and every #anchor to a heading of its file, so the docs
// never send a reader to something that is not there.
func TestDocsLinksResolve(t *testing.T) {
	files := []string{"README.md", "CHANGELOG.md"}
	err := filepath.WalkDir("docs", func(path string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.HasSuffix(path, ".md") {
			files = append(files, path)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]map[string]bool{}
	anchorsOf := func(file string) map[string]bool {
		if a, ok := anchors[file]; ok {
			return a
		}
		a := headingAnchors(t, file)
		anchors[file] = a
		return a
	}
	links := 0
	for _, file := range files {
		for _, l := range markdownLinks(t, file) {
			lineNo, target := l.line, l.target
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			links++
			path, anchor, _ := strings.Cut(target, "#")
			dest := file
			if path != "" {
				dest = filepath.Join(filepath.Dir(file), path)
				if _, err := os.Stat(dest); err != nil {
					t.Errorf("%s:%d: link %q: %s does not exist", file, lineNo, target, dest)
					continue
				}
			}
			if anchor != "" && strings.HasSuffix(dest, ".md") && !anchorsOf(dest)[anchor] {
				t.Errorf("%s:%d: link %q: %s has no heading #%s", file, lineNo, target, dest, anchor)
			}
		}
	}
	if links < 10 {
		t.Fatalf("found %d relative links in %v: the scan is broken", links, files)
	}
}

// Nothing in the repository points at a design document outside it.
func TestNoReferenceOutsideTheRepository(t *testing.T) {
	outside := []string{"shared/" + "DESIGN", "DESIGN" + ".md"}
	out, err := exec.Command("git", "ls-files", "-z").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	for path := range strings.SplitSeq(strings.TrimRight(string(out), "\x00"), "\x00") {
		b, err := os.ReadFile(path)
		if err != nil || bytes.IndexByte(b, 0) >= 0 {
			continue // gone from the work tree, or binary
		}
		for _, s := range outside {
			if i := bytes.Index(b, []byte(s)); i >= 0 {
				line := bytes.Count(b[:i], []byte("\n")) + 1
				t.Errorf("%s:%d mentions %s, which is not in the repository", path, line, s)
			}
		}
	}
}

type mdTarget struct {
	line   int
	target string
}

// markdownLinks returns the link targets of a Markdown file with their
// line numbers, outside fenced code blocks and inline code.
func markdownLinks(t *testing.T, file string) []mdTarget {
	t.Helper()
	f, err := os.Open(file)
	if err != nil {
		if os.IsNotExist(err) && file == "CHANGELOG.md" {
			t.Errorf("CHANGELOG.md is missing")
			return nil
		}
		t.Fatal(err)
	}
	defer f.Close()
	var out []mdTarget
	fenced := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
			continue
		}
		if fenced {
			continue
		}
		for _, m := range mdLink.FindAllStringSubmatch(stripInlineCode(line), -1) {
			out = append(out, mdTarget{n, m[1]})
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func stripInlineCode(line string) string {
	parts := strings.Split(line, "`")
	for i := 1; i < len(parts); i += 2 {
		parts[i] = ""
	}
	return strings.Join(parts, "`")
}

// headingAnchors returns the anchors GitHub gives a file's headings:
// lower case, punctuation but '-' and '_' dropped, spaces to '-', a
// repeated anchor suffixed -1, -2, ….
func headingAnchors(t *testing.T, file string) map[string]bool {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	anchors := map[string]bool{}
	seen := map[string]int{}
	fenced := false
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(strings.TrimSpace(line), "```") {
			fenced = !fenced
		}
		if fenced || !strings.HasPrefix(line, "#") {
			continue
		}
		title := strings.TrimSpace(strings.TrimLeft(line, "#"))
		var s strings.Builder
		for _, r := range strings.ToLower(title) {
			switch {
			case unicode.IsLetter(r) || unicode.IsDigit(r) || r == '-' || r == '_':
				s.WriteRune(r)
			case r == ' ':
				s.WriteRune('-')
			}
		}
		a := s.String()
		if n := seen[a]; n > 0 {
			anchors[fmt.Sprintf("%s-%d", a, n)] = true
		} else {
			anchors[a] = true
		}
		seen[a]++
	}
	return anchors
}

// Every Prometheus metric peakdesk defines is listed in the operations
// guide.
func TestEveryMetricIsDocumented(t *testing.T) {
	doc, err := os.ReadFile("docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("git", "ls-files", "-z", "*.go").Output()
	if err != nil {
		t.Fatalf("git ls-files: %v", err)
	}
	metric := regexp.MustCompile(`Name:\s+"(peakdesk_[a-z0-9_]+)"`)
	found := 0
	for path := range strings.SplitSeq(strings.TrimRight(string(out), "\x00"), "\x00") {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		src, err := os.ReadFile(path)
		if err != nil {
			continue // deleted in the work tree
		}
		for _, m := range metric.FindAllSubmatch(src, -1) {
			found++
			if !bytes.Contains(doc, []byte("`"+string(m[1]))) {
				t.Errorf("%s defines %s, which docs/operations.md does not list", path, m[1])
			}
		}
	}
	if found < 40 {
		t.Fatalf("found %d metrics: the scan is broken", found)
	}
}
