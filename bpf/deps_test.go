package bpf

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// TestBuildIncludesOnlyInstalledPackages is the guard against hidden build
// dependencies: it asks clang which files the BPF build includes (with the
// exact flags of this package's go:generate lines), asks dpkg which package
// each file belongs to, and fails when a package is not one scripts/deps.sh
// installs. A header that happens to be on the machine that ran the suite
// (glibc's gnu/stubs-32.h, from gcc-multilib, was one) fails here instead of
// on a user's fresh machine.
func TestBuildIncludesOnlyInstalledPackages(t *testing.T) {
	for _, tool := range []string{"clang", "dpkg", "bash"} {
		if _, err := exec.LookPath(tool); err != nil {
			if os.Getenv("CI") == "true" {
				t.Fatalf("CI=true but %s is missing (scripts/deps.sh installs it): %v", tool, err)
			}
			t.Skipf("%s not found (scripts/deps.sh installs it): %v", tool, err)
		}
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	allowed := depsPackages(t, repo)

	builds := generateLines(t, "gen.go")
	if len(builds) == 0 {
		t.Fatal("no go:generate bpf2go line with -cflags found in gen.go")
	}
	for _, b := range builds {
		t.Run(b.source, func(t *testing.T) {
			var outside []string
			for _, f := range includedFiles(t, b) {
				if !inside(repo, f) {
					outside = append(outside, f)
				}
			}
			owners := packageOwners(t, outside)
			var bad []string
			for _, f := range outside {
				pkgs := owners[f]
				if len(pkgs) == 0 {
					bad = append(bad, f+": belongs to no Debian package (installed by hand?)")
					continue
				}
				ok := false
				for _, p := range pkgs {
					if allowed[p] {
						ok = true
					}
				}
				if !ok {
					bad = append(bad, f+": from "+strings.Join(pkgs, ", ")+", which scripts/deps.sh does not install")
				}
			}
			if len(bad) > 0 {
				t.Errorf("the BPF build of %s includes files a machine set up by scripts/deps.sh may not have:\n  %s\n"+
					"a BPF object has no libc: define the type in bpf/include/ instead (see docs/architecture.md)",
					b.source, strings.Join(bad, "\n  "))
			}
		})
	}
}

type bpfBuild struct {
	cflags []string
	source string
}

var generateRe = regexp.MustCompile(`^//go:generate .*bpf2go .*-cflags "([^"]*)".* ([A-Za-z0-9_]+\.c)$`)

// generateLines returns the compile flags and C source of every bpf2go line.
func generateLines(t *testing.T, path string) []bpfBuild {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []bpfBuild
	for _, line := range strings.Split(string(data), "\n") {
		if m := generateRe.FindStringSubmatch(strings.TrimSpace(line)); m != nil {
			out = append(out, bpfBuild{cflags: strings.Fields(m[1]), source: m[2]})
		}
	}
	return out
}

// includedFiles runs the preprocessor of the BPF build in dependency mode and
// returns every file it reads, absolute and with symlinks resolved.
func includedFiles(t *testing.T, b bpfBuild) []string {
	t.Helper()
	args := append([]string{"-target", "bpfel"}, b.cflags...)
	args = append(args, "-M", b.source)
	cmd := exec.Command("clang", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("clang %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	// Make syntax: "target.o: dep dep \<newline> dep ...".
	text := strings.ReplaceAll(string(out), "\\\n", " ")
	if i := strings.Index(text, ":"); i >= 0 {
		text = text[i+1:]
	}
	seen := map[string]bool{}
	var files []string
	for _, f := range strings.Fields(text) {
		abs, err := filepath.Abs(f)
		if err != nil {
			t.Fatal(err)
		}
		if real, err := filepath.EvalSymlinks(abs); err == nil {
			abs = real
		}
		if !seen[abs] {
			seen[abs] = true
			files = append(files, abs)
		}
	}
	sort.Strings(files)
	return files
}

// packageOwners maps each file to the Debian packages dpkg says installed
// it (none: not from a package).
func packageOwners(t *testing.T, files []string) map[string][]string {
	t.Helper()
	owners := map[string][]string{}
	if len(files) == 0 {
		return owners
	}
	// dpkg -S exits 1 when some path is owned by no package; the others are
	// still listed, and the missing ones stay without owner.
	out, _ := exec.Command("dpkg", append([]string{"-S"}, files...)...).Output()
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		// "linux-libc-dev:amd64: /usr/include/linux/bpf.h", or
		// "pkg-a, pkg-b: /path" for a path several packages share.
		pkgs, path, ok := strings.Cut(sc.Text(), ": ")
		if !ok {
			continue
		}
		for _, p := range strings.Split(pkgs, ",") {
			p, _, _ = strings.Cut(strings.TrimSpace(p), ":")
			owners[path] = append(owners[path], p)
		}
	}
	return owners
}

// depsPackages is the set of packages scripts/deps.sh installs.
func depsPackages(t *testing.T, repo string) map[string]bool {
	t.Helper()
	out, err := exec.Command("bash", filepath.Join(repo, "scripts/deps.sh"), "--print-packages").Output()
	if err != nil {
		t.Fatalf("scripts/deps.sh --print-packages: %v", err)
	}
	set := map[string]bool{}
	for _, p := range strings.Fields(string(out)) {
		set[p] = true
	}
	if len(set) == 0 {
		t.Fatal("scripts/deps.sh --print-packages listed nothing")
	}
	return set
}

func inside(dir, path string) bool {
	rel, err := filepath.Rel(dir, path)
	return err == nil && !strings.HasPrefix(rel, "..")
}

func TestGenerateLinesParsed(t *testing.T) {
	got := generateLines(t, "gen.go")
	sources := map[string]bool{}
	for _, b := range got {
		sources[b.source] = true
		if len(b.cflags) == 0 {
			t.Errorf("%s: no cflags parsed", b.source)
		}
	}
	// Every C program of the package has its bpf2go line (and so is guarded).
	cs, err := filepath.Glob("*.c")
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		if !sources[c] {
			t.Errorf("%s has no go:generate bpf2go line the guard could read", c)
		}
	}
}
