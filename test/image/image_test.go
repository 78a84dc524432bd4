package image

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"sort"
	"strings"
	"testing"
	"time"
)

// TARN_TEST_IMAGE names the image to check; deploy/images/tarn-image.sh
// (make images-tarn, make test-image, and so every make images and
// make kind-up) sets it to the image it has just built.
const imageEnv = "TARN_TEST_IMAGE"

// Names that must not be in the image anywhere, as a file or a link: a
// shell or an interpreter would let anyone who reaches the privileged
// container run anything, and a package manager would let them add it.
var forbidden = map[string]bool{
	"sh": true, "bash": true, "rbash": true, "dash": true, "ash": true,
	"zsh": true, "ksh": true, "ksh93": true, "mksh": true, "csh": true,
	"tcsh": true, "fish": true, "busybox": true, "toybox": true,
	"perl": true, "python": true, "python3": true,
	"apt": true, "apt-get": true, "apt-cache": true, "apt-key": true,
	"aptitude": true, "dpkg": true, "dpkg-deb": true, "dpkg-query": true,
	"rpm": true, "yum": true, "dnf": true, "microdnf": true, "apk": true,
}

// Package databases: their presence means a package manager's state came
// along, whatever binaries did.
var forbiddenDirs = []string{"var/lib/dpkg", "var/lib/apt", "etc/apt", "var/lib/rpm"}

// Where the programs are looked up, as tarn's PATH has them.
var binDirs = []string{"usr/sbin", "usr/bin", "sbin", "bin"}

// Data files the programs read at run time; their built-in defaults differ
// (mke2fs's lack the features Debian's mke2fs.conf turns on).
var dataFiles = []string{"etc/mke2fs.conf", "etc/lvm/lvm.conf"}

type entry struct {
	typ      byte
	mode     int64
	linkname string
}

// image is the image's file system, read from `docker export`.
type image map[string]entry

func exportImage(t *testing.T, ref string) image {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "docker", "create", ref).Output()
	if err != nil {
		t.Fatalf("docker create %s: %v", ref, stderr(err))
	}
	id := strings.TrimSpace(string(out))
	defer exec.Command("docker", "rm", "-f", id).Run()

	cmd := exec.CommandContext(ctx, "docker", "export", id)
	r, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	img := image{}
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("reading docker export: %v", err)
		}
		name := strings.Trim(path.Clean("/"+h.Name), "/")
		if name == "" {
			continue
		}
		img[name] = entry{typ: h.Typeflag, mode: h.Mode, linkname: h.Linkname}
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("docker export: %v", stderr(err))
	}
	if len(img) == 0 {
		t.Fatal("docker export gave no file")
	}
	return img
}

func stderr(err error) error {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(ee.Stderr)))
	}
	return err
}

// resolve follows symbolic links inside the image, as the kernel would in
// a container of it, and returns the path of what name finally is.
func (img image) resolve(name string) (string, bool) {
	parts := strings.Split(strings.Trim(path.Clean("/"+name), "/"), "/")
	cur := ""
	for hops := 0; len(parts) > 0; {
		next := path.Join(cur, parts[0])
		parts = parts[1:]
		e, ok := img[next]
		if !ok {
			return "", false
		}
		if e.typ != tar.TypeSymlink {
			cur = next
			continue
		}
		if hops++; hops > 40 {
			return "", false
		}
		target := e.linkname
		if !strings.HasPrefix(target, "/") {
			target = path.Join("/", cur, target)
		}
		rest := strings.Split(strings.Trim(path.Clean(target), "/"), "/")
		parts = append(rest, parts...)
		cur = ""
	}
	return cur, true
}

// lookPath finds a program as exec.LookPath would with tarn's PATH.
func (img image) lookPath(name string) (string, bool) {
	for _, dir := range binDirs {
		if p, ok := img.resolve(dir + "/" + name); ok && img[p].typ == tar.TypeReg && img[p].mode&0o111 != 0 {
			return p, true
		}
	}
	return "", false
}

func imageRef(t *testing.T) string {
	ref := os.Getenv(imageEnv)
	if ref == "" {
		t.Skipf("%s is not set: deploy/images/tarn-image.sh (make test-image) runs this on the image it builds", imageEnv)
	}
	return ref
}

// TestImageHasNoShell lists the image's files and fails on a shell, an
// interpreter, a package manager or its database, and on any program that
// deploy/images/runtime-programs does not list.
func TestImageHasNoShell(t *testing.T) {
	ref := imageRef(t)
	img := exportImage(t, ref)
	list := readList(t)

	var bad []string
	if real, ok := img.resolve("bin/sh"); ok {
		t.Errorf("%s has /bin/sh (/%s)", ref, real)
	}
	for name, e := range img {
		if e.typ != tar.TypeDir && forbidden[path.Base(name)] {
			bad = append(bad, "/"+name)
		}
	}
	for _, dir := range forbiddenDirs {
		if _, ok := img[dir]; ok {
			bad = append(bad, "/"+dir+"/")
		}
	}
	sort.Strings(bad)
	if len(bad) > 0 {
		t.Errorf("%s holds a shell, an interpreter or a package manager: %s", ref, abbreviate(bad))
	}

	// Every executable file must be tarn, a listed program, or the dynamic
	// loader and libraries they load.
	allowed := map[string]bool{"tarn": true}
	for _, p := range list {
		if real, ok := img.lookPath(p.name); ok {
			allowed[real] = true
		}
	}
	var extra []string
	for name, e := range img {
		if e.typ != tar.TypeReg || e.mode&0o111 == 0 || allowed[name] || byDocker(name) {
			continue
		}
		if base := path.Base(name); strings.Contains(base, ".so") {
			continue
		}
		extra = append(extra, "/"+name)
	}
	sort.Strings(extra)
	if len(extra) > 0 {
		t.Errorf("%s holds %d programs that %s does not list: %s", ref, len(extra), listFile, abbreviate(extra))
	}
}

// byDocker reports whether docker create made the file: the image holds
// no such file, a container of it always does.
func byDocker(name string) bool {
	switch name {
	case ".dockerenv", "etc/hostname", "etc/hosts", "etc/resolv.conf":
		return true
	}
	return strings.HasPrefix(name, "dev/")
}

func abbreviate(names []string) string {
	const most = 40
	if len(names) <= most {
		return strings.Join(names, " ")
	}
	return strings.Join(names[:most], " ") + fmt.Sprintf(" ... and %d more", len(names)-most)
}

// TestImageHasListedPrograms fails when a listed program, or a data file
// one of them needs, is missing from the image, or when a program's
// shared libraries do not all resolve there (asked of the image's own
// dynamic loader).
func TestImageHasListedPrograms(t *testing.T) {
	ref := imageRef(t)
	img := exportImage(t, ref)
	list := readList(t)

	if e, ok := img["tarn"]; !ok || e.typ != tar.TypeReg || e.mode&0o111 == 0 {
		t.Errorf("%s has no executable /tarn", ref)
	}
	for _, f := range dataFiles {
		if p, ok := img.resolve(f); !ok || img[p].typ != tar.TypeReg {
			t.Errorf("%s has no %s", ref, f)
		}
	}
	// mount-utils probes umount in a new directory of $TMPDIR (/tmp), and
	// LVM makes its lock directory under /run/lock.
	for _, dir := range []string{"tmp", "run/lock"} {
		if p, ok := img.resolve(dir); !ok || img[p].typ != tar.TypeDir {
			t.Errorf("%s has no /%s directory", ref, dir)
		}
	}
	if p, ok := img.resolve("tmp"); ok && img[p].mode&0o1777 != 0o1777 {
		t.Errorf("%s: /tmp has mode %o, want 1777", ref, img[p].mode&0o7777)
	}

	loader, ok := img.resolve("lib64/ld-linux-x86-64.so.2")
	if !ok {
		t.Fatalf("%s has no dynamic loader /lib64/ld-linux-x86-64.so.2", ref)
	}
	for _, p := range list {
		real, ok := img.lookPath(p.name)
		if !ok {
			t.Errorf("%s: %s (%s) is missing", ref, p.name, p.why)
			continue
		}
		out, err := exec.Command("docker", "run", "--rm", "--network=none",
			"--entrypoint", "/"+loader, ref, "--list", "/"+real).CombinedOutput()
		if err != nil || strings.Contains(string(out), "not found") {
			t.Errorf("%s: the libraries of %s (/%s) do not resolve: %v\n%s", ref, p.name, real, err, out)
		}
	}
}
