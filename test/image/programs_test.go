// Package image checks Tarn's container image against the one list of the
// programs it must carry, deploy/images/runtime-programs: the code runs
// nothing that is not on the list (this file), and the image holds what
// is on it and no other program (image_test.go).
package image

import (
	"bufio"
	"bytes"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/printer"
	"go/token"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

const listFile = "../../deploy/images/runtime-programs"

// program is one line of the list.
type program struct {
	name, by, why string
}

func readList(t *testing.T) []program {
	t.Helper()
	f, err := os.Open(listFile)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var list []program
	seen := map[string]bool{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) < 3 {
			t.Fatalf("%s:%d: want \"program runner why\", got %q", listFile, n, line)
		}
		p := program{name: fields[0], by: fields[1], why: strings.Join(fields[2:], " ")}
		if seen[p.name] {
			t.Fatalf("%s:%d: %s listed twice", listFile, n, p.name)
		}
		seen[p.name] = true
		list = append(list, p)
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(list) == 0 {
		t.Fatalf("%s lists no program", listFile)
	}
	return list
}

// notRun are programs the code can run but Tarn never makes it run, so
// that the image does without them.
var notRun = map[string]string{
	"systemd-run": "mount-utils runs mounts in a systemd scope only when it detects systemd, and Tarn's mounter is NewWithoutSystemd",
	"btrfs":       "mount-utils ResizeFs runs it only for a btrfs filesystem, and Tarn formats only ext4 and xfs",
}

// computed are the program arguments that are not a string literal or a
// constant, keyed by package and expression: what each can be. An exec
// call with an argument not here fails the test, so that a new one is
// looked at (and its program put on the list) before it ships.
var computed = map[string][]string{
	// Mount's command: mounterPath, "" in NewWithoutSystemd(""), else
	// defaultMountCommand.
	"k8s.io/mount-utils mountCmd": {"mount"},
	// formatAndMount's mkfs, for the filesystems Tarn accepts
	// (supportedFsTypes in pkg/driver).
	`k8s.io/mount-utils "mkfs." + fstype`: {"mkfs.ext4", "mkfs.xfs"},
	// The wrapper of os/exec that mount-utils runs everything through.
	"k8s.io/utils/exec cmd": nil,
	// Exec.Path, "" (lvm looked up) everywhere Tarn makes a Client.
	"github.com/tarn-csi/tarn/pkg/lvm path": {"lvm"},
}

type goPackage struct {
	ImportPath string
	Dir        string
	Standard   bool
	GoFiles    []string
}

// execCalls returns every program the tarn binary can run, each with
// where: the Command and CommandContext calls of os/exec and of
// k8s.io/utils/exec in the non-test Go files, for Linux, of every package
// the binary is built from outside the standard library.
func execCalls(t *testing.T) map[string][]string {
	t.Helper()
	cmd := exec.Command("go", "list", "-deps", "-json", "./cmd/tarn")
	cmd.Dir = "../.."
	cmd.Env = append(os.Environ(), "GOOS=linux", "CGO_ENABLED=0")
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	found := map[string][]string{}
	dec := json.NewDecoder(bytes.NewReader(out))
	for dec.More() {
		var p goPackage
		if err := dec.Decode(&p); err != nil {
			t.Fatal(err)
		}
		if p.Standard {
			continue
		}
		scanPackage(t, p, found)
	}
	return found
}

func scanPackage(t *testing.T, p goPackage, found map[string][]string) {
	fset := token.NewFileSet()
	var files []*ast.File
	for _, name := range p.GoFiles {
		f, err := parser.ParseFile(fset, filepath.Join(p.Dir, name), nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		files = append(files, f)
	}
	consts := stringConsts(files)
	for _, f := range files {
		if !importsExec(f) {
			continue
		}
		ast.Inspect(f, func(n ast.Node) bool {
			call, ok := n.(*ast.CallExpr)
			if !ok {
				return true
			}
			sel, ok := call.Fun.(*ast.SelectorExpr)
			if !ok {
				return true
			}
			arg := -1
			switch sel.Sel.Name {
			case "Command":
				arg = 0
			case "CommandContext":
				arg = 1
			}
			if arg < 0 || len(call.Args) <= arg {
				return true
			}
			// exec.Command itself, or the Command method of whatever
			// runs programs in a file that imports an exec package
			// (mount-utils' utilexec.Interface): both run a program.
			where := fset.Position(call.Pos()).String()
			expr := call.Args[arg]
			if lit, ok := expr.(*ast.BasicLit); ok && lit.Kind == token.STRING {
				s, _ := strconv.Unquote(lit.Value)
				found[s] = append(found[s], where)
				return true
			}
			if id, ok := expr.(*ast.Ident); ok {
				if s, ok := consts[id.Name]; ok {
					found[s] = append(found[s], where)
					return true
				}
			}
			var b strings.Builder
			printer.Fprint(&b, fset, expr)
			key := p.ImportPath + " " + b.String()
			progs, ok := computed[key]
			if !ok {
				t.Errorf("%s: runs %s, which this test cannot tell: add %q to computed, with what it can be, and those to %s", where, b.String(), key, listFile)
				return true
			}
			for _, s := range progs {
				found[s] = append(found[s], where)
			}
			return true
		})
	}
}

func importsExec(f *ast.File) bool {
	for _, imp := range f.Imports {
		path, _ := strconv.Unquote(imp.Path.Value)
		if path == "os/exec" || path == "k8s.io/utils/exec" {
			return true
		}
	}
	return false
}

// stringConsts returns the package's string constants by name.
func stringConsts(files []*ast.File) map[string]string {
	consts := map[string]string{}
	for _, f := range files {
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.CONST {
				continue
			}
			for _, spec := range gd.Specs {
				vs := spec.(*ast.ValueSpec)
				for i, name := range vs.Names {
					if i >= len(vs.Values) {
						continue
					}
					if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
						consts[name.Name], _ = strconv.Unquote(lit.Value)
					}
				}
			}
		}
	}
	return consts
}

// TestCodeRunsOnlyListedPrograms fails when the code can run a program the
// image would not have, when the list names a program nothing runs, and
// when a program is said to be run by one that is not listed.
func TestCodeRunsOnlyListedPrograms(t *testing.T) {
	list := readList(t)
	found := execCalls(t)
	if len(found) == 0 {
		t.Fatal("found no exec call at all: the scan is broken")
	}
	listed := map[string]program{}
	for _, p := range list {
		listed[p.name] = p
	}
	var names []string
	for name := range found {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p, ok := listed[name]
		switch {
		case notRun[name] != "":
			if ok {
				t.Errorf("%s is listed in %s and also in notRun: which is it?", name, listFile)
			}
		case !ok:
			t.Errorf("the code runs %s (%s), which %s does not list: the image would not have it", name, strings.Join(found[name], ", "), listFile)
		case p.by != "tarn":
			t.Errorf("the code runs %s (%s), but %s says %s runs it", name, strings.Join(found[name], ", "), listFile, p.by)
		default:
			t.Logf("%-11s %s", name, strings.Join(found[name], ", "))
		}
	}
	for _, p := range list {
		if p.by == "tarn" {
			if len(found[p.name]) == 0 {
				t.Errorf("%s lists %s as run by tarn, but nothing in the code runs it: remove it", listFile, p.name)
			}
			continue
		}
		if by, ok := listed[p.by]; !ok || by.name == p.name {
			t.Errorf("%s: %s is run by %s, which is not listed", listFile, p.name, p.by)
		}
	}
	for name := range notRun {
		if len(found[name]) == 0 {
			t.Errorf("notRun names %s, which the code no longer runs: remove it", name)
		}
	}
}
