// SPDX-License-Identifier: Apache-2.0

// Command vmtest runs tcpstate's kernel tests on the kernels production hosts
// run, by booting Debian's own kernel packages in qemu (software emulation,
// TCG: nested KVM is not to be relied on).
//
// For each kernel it fetches the Debian package through apt with a private
// sources list and state directory (the machine's own apt configuration is
// never touched), builds a small initramfs (busybox-static, the static
// tcpstate binary and the kernel test binaries of ./tracer and ./cmd/tcpstate),
// boots it, runs `tcpstate check` and the tests inside, and prints one line per
// kernel. Packages and extracted kernels are cached between runs.
//
//	go run ./scripts/vmtest                          # the whole matrix
//	go run ./scripts/vmtest -kernels bookworm/arm64 -run 'TestClientClosesFirst'
//	go run ./scripts/vmtest -features README.md      # also rewrite README's kernel table
//
// Needs root (the tests inside need it anyway, and apt-get download), and the
// Debian packages qemu-system-x86 and qemu-system-arm, which it installs when
// they are missing.
package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// A kernel of the matrix: a Debian release's cloud kernel for one architecture.
type kernel struct {
	Suite string // bullseye, bookworm, trixie
	Arch  string // Debian and Go architecture: amd64, arm64
}

func (k kernel) String() string { return k.Suite + "/" + k.Arch }

// matrix is what CI runs: the Debian cloud kernels of the LTS lines our
// users run (5.10, 6.1, 6.12), on both architectures.
var matrix = []kernel{
	{"bullseye", "amd64"}, {"bookworm", "amd64"}, {"trixie", "amd64"},
	{"bullseye", "arm64"}, {"bookworm", "arm64"}, {"trixie", "arm64"},
}

type options struct {
	kernels  []kernel
	cache    string
	run      string
	count    int
	short    bool
	timeout  time.Duration
	jobs     int
	verbose  bool
	features string
	mirror   string
	cpu      string
	accel    string
}

func main() {
	var o options
	var list string
	flag.StringVar(&list, "kernels", "", "comma-separated SUITE/ARCH to run (default: the whole matrix: "+matrixString()+")")
	flag.StringVar(&o.cache, "cache", "/var/tmp/tcpstate-vmtest", "directory for packages, kernels and logs, kept between runs")
	flag.StringVar(&o.run, "run", "", "only tests matching this regexp (as go test -run)")
	flag.IntVar(&o.count, "count", 1, "run each test this many times (as go test -count), to catch a rare failure")
	flag.BoolVar(&o.short, "short", true, "run the tests with -short (skips the minute-long TIME_WAIT waits)")
	flag.DurationVar(&o.timeout, "timeout", 30*time.Minute, "give up on one kernel after this long")
	flag.IntVar(&o.jobs, "j", 1, "kernels booted at once (each VM gets 2 CPUs)")
	flag.BoolVar(&o.verbose, "v", false, "copy each VM's console to stdout")
	flag.StringVar(&o.features, "features", "", "rewrite the kernel table between <!-- vmtest:features --> markers in this file")
	flag.StringVar(&o.mirror, "mirror", "http://deb.debian.org/debian", "Debian mirror")
	flag.StringVar(&o.accel, "accel", "tcg,thread=single", "qemu -accel (one host thread for the VM's CPUs: with one each, QEMU 7.2 races on the code the kernel patches when a tracer attaches, an int3 oops in 6.12)")
	flag.StringVar(&o.cpu, "cpu-x86", "max,-cx16", "qemu -cpu for x86_64 guests (without cmpxchg16b: QEMU 7.2 under TCG double-faults Linux 6.12 in the slab allocator's cmpxchg16b)")
	flag.Parse()
	if list == "" {
		o.kernels = matrix
	} else {
		for _, s := range strings.Split(list, ",") {
			suite, arch, ok := strings.Cut(strings.TrimSpace(s), "/")
			if !ok || (arch != "amd64" && arch != "arm64") {
				fatalf("-kernels %q: want SUITE/ARCH, e.g. bookworm/arm64", s)
			}
			o.kernels = append(o.kernels, kernel{suite, arch})
		}
	}
	if err := run(context.Background(), o); err != nil {
		fatalf("%v", err)
	}
}

func matrixString() string {
	var s []string
	for _, k := range matrix {
		s = append(s, k.String())
	}
	return strings.Join(s, ",")
}

func fatalf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "vmtest: "+format+"\n", args...)
	os.Exit(1)
}

func run(ctx context.Context, o options) error {
	need := map[string]string{"apt-get": "apt", "dpkg-deb": "dpkg", "gzip": "gzip"}
	for _, k := range o.kernels {
		need[qemuBinary(k.Arch)] = qemuPackage(k.Arch)
	}
	var missing []string
	for bin, pkg := range need {
		if _, err := exec.LookPath(bin); err != nil && !slices.Contains(missing, pkg) {
			missing = append(missing, pkg)
		}
	}
	if err := install(ctx, missing); err != nil {
		return err
	}
	root, err := repoRoot()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(o.cache, 0o755); err != nil {
		return err
	}

	// Fetch everything first: network errors show before any VM boots.
	suites := map[string]bool{"bookworm": true} // busybox comes from bookworm
	for _, k := range o.kernels {
		suites[k.Suite] = true
	}
	a := &apt{dir: filepath.Join(o.cache, "apt"), mirror: o.mirror}
	if err := a.update(ctx, keys(suites)); err != nil {
		return err
	}
	type prepared struct {
		k      kernel
		pkg    *kernelPkg
		initrd string
	}
	var runs []prepared
	payloads := map[string]string{}
	for _, k := range o.kernels {
		pkg, err := a.kernel(ctx, k, filepath.Join(o.cache, "kernels"))
		if err != nil {
			return fmt.Errorf("%s: %w", k, err)
		}
		if payloads[k.Arch] == "" {
			dir := filepath.Join(o.cache, "payload-"+k.Arch)
			if err := buildPayload(ctx, root, dir, k.Arch, a); err != nil {
				return fmt.Errorf("building the tests for %s: %w", k.Arch, err)
			}
			payloads[k.Arch] = dir
		}
		initrd := filepath.Join(o.cache, "initrd-"+pkg.release+".gz")
		if err := buildInitrd(initrd, payloads[k.Arch], pkg, root, o); err != nil {
			return fmt.Errorf("%s: building initramfs: %w", k, err)
		}
		runs = append(runs, prepared{k, pkg, initrd})
	}

	results := make([]result, len(runs))
	sem := make(chan struct{}, max(o.jobs, 1))
	var wg sync.WaitGroup
	for i, r := range runs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			defer func() { <-sem }()
			results[i] = boot(ctx, r.k, r.pkg, r.initrd, o)
			fmt.Print(results[i].line() + "\n" + results[i].why())
		}()
	}
	wg.Wait()

	if o.features != "" {
		if err := writeFeatures(o.features, results); err != nil {
			return err
		}
	}
	var failed []string
	for _, r := range results {
		if !r.ok() {
			failed = append(failed, r.k.String())
		}
	}
	if len(failed) > 0 {
		return fmt.Errorf("failed on %s (consoles in %s/logs)", strings.Join(failed, ", "), o.cache)
	}
	return nil
}

// install installs Debian packages the harness needs (as root, on Debian).
func install(ctx context.Context, pkgs []string) error {
	if len(pkgs) == 0 {
		return nil
	}
	sort.Strings(pkgs)
	if os.Geteuid() != 0 {
		return fmt.Errorf("missing %s: apt-get install -y %s", strings.Join(pkgs, ", "), strings.Join(pkgs, " "))
	}
	fmt.Println("vmtest: installing " + strings.Join(pkgs, " "))
	for _, args := range [][]string{{"update", "-qq"}, append([]string{"install", "-y", "-qq"}, pkgs...)} {
		c := exec.CommandContext(ctx, "apt-get", args...)
		c.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		if out, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("apt-get %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	return nil
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

func repoRoot() (string, error) {
	out, err := exec.Command("go", "env", "GOMOD").Output()
	if err != nil || strings.TrimSpace(string(out)) == "" || strings.TrimSpace(string(out)) == os.DevNull {
		return "", errors.New("run vmtest from inside the tcpstate module")
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

func qemuBinary(arch string) string {
	if arch == "arm64" {
		return "qemu-system-aarch64"
	}
	return "qemu-system-x86_64"
}

func qemuPackage(arch string) string {
	if arch == "arm64" {
		return "qemu-system-arm"
	}
	return "qemu-system-x86"
}

// apt runs apt-get and apt-cache on a private configuration under dir.
type apt struct {
	dir    string
	mirror string
}

func (a *apt) args() []string {
	return []string{
		"-o", "Dir::Etc::sourcelist=" + filepath.Join(a.dir, "sources.list"),
		"-o", "Dir::Etc::sourceparts=-",
		"-o", "Dir::State::lists=" + filepath.Join(a.dir, "lists"),
		"-o", "Dir::State::status=" + filepath.Join(a.dir, "status"),
		"-o", "Dir::Cache=" + filepath.Join(a.dir, "cache"),
		"-o", "APT::Architectures::=amd64", "-o", "APT::Architectures::=arm64",
		"-o", "Debug::NoLocking=1",
		"-o", "APT::Sandbox::User=root",
	}
}

// update refreshes the package lists of suites, at most once a day.
func (a *apt) update(ctx context.Context, suites []string) error {
	for _, d := range []string{"lists/partial", "cache/archives/partial", "debs"} {
		if err := os.MkdirAll(filepath.Join(a.dir, d), 0o755); err != nil {
			return err
		}
	}
	var src strings.Builder
	for _, s := range suites {
		fmt.Fprintf(&src, "deb [arch=amd64,arm64] %s %s main\n", a.mirror, s)
	}
	listPath := filepath.Join(a.dir, "sources.list")
	old, _ := os.ReadFile(listPath)
	stamp := filepath.Join(a.dir, "updated")
	if st, err := os.Stat(stamp); err == nil && string(old) == src.String() && time.Since(st.ModTime()) < 24*time.Hour {
		return nil
	}
	if err := os.WriteFile(listPath, []byte(src.String()), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(a.dir, "status"), nil, 0o644); err != nil {
		return err
	}
	fmt.Println("vmtest: apt-get update (" + strings.Join(suites, ", ") + ")")
	if out, err := a.cmd(ctx, "apt-get", "update").CombinedOutput(); err != nil {
		return fmt.Errorf("apt-get update: %v\n%s", err, out)
	}
	return os.WriteFile(stamp, nil, 0o644)
}

func (a *apt) cmd(ctx context.Context, name string, args ...string) *exec.Cmd {
	c := exec.CommandContext(ctx, name, append(a.args(), args...)...)
	c.Dir = filepath.Join(a.dir, "debs")
	return c
}

// download fetches pkg (name:arch, optionally =version) into the deb cache
// unless it is there, and returns the .deb's path.
func (a *apt) download(ctx context.Context, pkg, pattern string) (string, error) {
	debs := filepath.Join(a.dir, "debs")
	if m, _ := filepath.Glob(filepath.Join(debs, pattern)); len(m) > 0 {
		return m[len(m)-1], nil
	}
	if out, err := a.cmd(ctx, "apt-get", "download", pkg).CombinedOutput(); err != nil {
		return "", fmt.Errorf("apt-get download %s: %v\n%s", pkg, err, out)
	}
	m, _ := filepath.Glob(filepath.Join(debs, pattern))
	if len(m) == 0 {
		return "", fmt.Errorf("apt-get download %s: no %s afterwards", pkg, pattern)
	}
	return m[len(m)-1], nil
}

// kernelPkg is an extracted kernel package.
type kernelPkg struct {
	name    string // linux-image-6.1.0-50-cloud-arm64-unsigned
	release string // 6.1.0-50-cloud-arm64 (uname -r)
	version string // the package version, 6.1.176-1
	vmlinuz string
	config  string
}

// kernel finds the current cloud kernel of k's suite (the one its
// linux-image-cloud-ARCH metapackage depends on), downloads and extracts it.
func (a *apt) kernel(ctx context.Context, k kernel, into string) (*kernelPkg, error) {
	meta := "linux-image-cloud-" + k.Arch
	out, err := a.cmd(ctx, "apt-cache", "-o", "APT::Default-Release="+k.Suite, "depends", meta+":"+k.Arch).Output()
	if err != nil {
		return nil, fmt.Errorf("apt-cache depends %s: %w", meta, err)
	}
	dep := ""
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), "Depends: "); ok && strings.HasPrefix(v, "linux-image-") {
			dep = strings.TrimSuffix(strings.Fields(v)[0], ":"+k.Arch)
			break
		}
	}
	if dep == "" {
		return nil, fmt.Errorf("%s in %s depends on no kernel image:\n%s", meta, k.Suite, out)
	}
	// Debian 11 to 13: the image in linux-image-RELEASE-unsigned (beside
	// the signed one). Later suites split linux-image-RELEASE into
	// linux-binary-RELEASE (the image) and linux-base-RELEASE (the config),
	// under usr/lib/modules/RELEASE.
	release := strings.TrimSuffix(strings.TrimPrefix(dep, "linux-image-"), "-unsigned")
	name := "linux-image-" + release + "-unsigned"
	dir := filepath.Join(into, release)
	p := &kernelPkg{
		name: name, release: release,
		vmlinuz: filepath.Join(dir, "boot", "vmlinuz-"+release),
		config:  filepath.Join(dir, "boot", "config-"+release),
	}
	parts := []string{name}
	if _, err := a.cmd(ctx, "apt-cache", "show", name+":"+k.Arch).Output(); err != nil {
		p.name = "linux-binary-" + release
		p.vmlinuz = filepath.Join(dir, "usr", "lib", "modules", release, "vmlinuz")
		p.config = filepath.Join(dir, "usr", "lib", "modules", release, "config")
		parts = []string{p.name, "linux-base-" + release}
	}
	var debs []string
	for _, part := range parts {
		deb, err := a.download(ctx, part+":"+k.Arch, part+"_*_"+k.Arch+".deb")
		if err != nil {
			return nil, err
		}
		debs = append(debs, deb)
	}
	if base := filepath.Base(debs[0]); strings.Count(base, "_") == 2 {
		p.version = strings.Split(base, "_")[1]
	}
	if _, err := os.Stat(p.vmlinuz); err != nil {
		_ = os.RemoveAll(dir)
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
		for _, deb := range debs {
			if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, dir).CombinedOutput(); err != nil {
				return nil, fmt.Errorf("dpkg-deb -x %s: %v\n%s", deb, err, out)
			}
		}
		// The modules are not needed: the tests use what is built in.
		_ = os.RemoveAll(filepath.Join(dir, "lib"))
		if len(parts) == 1 {
			_ = os.RemoveAll(filepath.Join(dir, "usr"))
		} else {
			_ = os.RemoveAll(filepath.Join(dir, "usr", "lib", "modules", release, "kernel"))
			_ = os.RemoveAll(filepath.Join(dir, "usr", "share"))
		}
	}
	return p, nil
}

// buildPayload builds, for arch, the static tcpstate binary, the kernel test
// binaries and fetches busybox.
func buildPayload(ctx context.Context, root, dir, arch string, a *apt) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	env := append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch)
	for _, b := range [][]string{
		{"build", "-o", filepath.Join(dir, "tcpstate"), "./cmd/tcpstate"},
		{"test", "-c", "-o", filepath.Join(dir, "tracer.test"), "./tracer"},
		{"test", "-c", "-o", filepath.Join(dir, "cmd.test"), "./cmd/tcpstate"},
	} {
		c := exec.CommandContext(ctx, "go", b...)
		c.Dir, c.Env = root, env
		if out, err := c.CombinedOutput(); err != nil {
			return fmt.Errorf("go %s: %v\n%s", strings.Join(b, " "), err, out)
		}
	}
	deb, err := a.download(ctx, "busybox-static:"+arch, "busybox-static_*_"+arch+".deb")
	if err != nil {
		return err
	}
	bb := filepath.Join(dir, "bb")
	_ = os.RemoveAll(bb)
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, bb).CombinedOutput(); err != nil {
		return fmt.Errorf("dpkg-deb -x %s: %v\n%s", deb, err, out)
	}
	for _, p := range []string{"bin/busybox", "usr/bin/busybox"} { // usr-merged from trixie on
		if err := os.Rename(filepath.Join(bb, p), filepath.Join(dir, "busybox")); err == nil {
			return nil
		}
	}
	return fmt.Errorf("no busybox binary in %s", deb)
}

// initScript is /init in the VM. It prints "vmtest: " lines that boot()
// reads: the feature report of `tcpstate check -o json`, and each test
// package's exit status.
const initScript = `#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
ip link set lo up
hostname vmtest
export PATH=/bin HOME=/root TCPSTATE_BIN=/tests/tcpstate GOTRACEBACK=all
echo "vmtest: kernel $(uname -r) $(uname -m) $(nproc) cpus"
/tests/tcpstate check -o json 2>&1 | sed 's/^/vmtest: check /'
for pkg in tracer cmd; do
	dir=/src/tracer
	[ $pkg = cmd ] && dir=/src/cmd/tcpstate
	cd $dir
	/tests/$pkg.test -test.v -test.timeout 25m @ARGS@ 2>&1
	echo "vmtest: result $pkg $?"
done
echo "vmtest: done"
poweroff -f
`

// buildInitrd writes the initramfs for one kernel.
func buildInitrd(path, payload string, k *kernelPkg, root string, o options) error {
	args := []string{}
	if o.short {
		args = append(args, "-test.short")
	}
	if o.run != "" {
		args = append(args, "-test.run '"+strings.ReplaceAll(o.run, "'", "")+"'")
	}
	if o.count > 1 {
		args = append(args, "-test.count "+strconv.Itoa(o.count))
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		return err
	}
	config, err := os.ReadFile(k.config)
	if err != nil {
		return err
	}
	f, err := os.Create(path + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	gz := exec.Command("gzip", "-1")
	gz.Stdout = f
	in, err := gz.StdinPipe()
	if err != nil {
		return err
	}
	if err := gz.Start(); err != nil {
		return err
	}
	w := &cpioWriter{w: bufio.NewWriterSize(in, 1<<20)}
	for _, d := range []string{"bin", "boot", "dev", "etc", "proc", "root", "run", "sys", "tmp", "tests", "src", "src/tracer", "src/cmd", "src/cmd/tcpstate", "src/deploy"} {
		w.dir(d)
	}
	w.file("init", 0o755, []byte(strings.Replace(initScript, "@ARGS@", strings.Join(args, " "), 1)))
	w.file("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"))
	w.file("etc/group", 0o644, []byte("root:x:0:\nnogroup:x:65534:\n"))
	w.file("boot/config-"+k.release, 0o644, config)
	w.file("src/README.md", 0o644, readme)
	// The tests read the files they check from the checkout, as at home.
	deploy, err := os.ReadDir(filepath.Join(root, "deploy"))
	if err != nil {
		return err
	}
	for _, e := range deploy {
		b, err := os.ReadFile(filepath.Join(root, "deploy", e.Name()))
		if err != nil {
			return err
		}
		w.file("src/deploy/"+e.Name(), 0o644, b)
	}
	for _, name := range []string{"busybox", "tcpstate", "tracer.test", "cmd.test"} {
		b, err := os.ReadFile(filepath.Join(payload, name))
		if err != nil {
			return err
		}
		dst := "tests/" + name
		if name == "busybox" {
			dst = "bin/busybox"
		}
		w.file(dst, 0o755, b)
	}
	w.trailer()
	if err := errors.Join(w.err, w.w.Flush(), in.Close(), gz.Wait()); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(path+".tmp", path)
}

// cpioWriter writes the "newc" cpio format the kernel unpacks.
type cpioWriter struct {
	w   *bufio.Writer
	ino int
	err error
}

func (c *cpioWriter) entry(name string, mode uint32, data []byte) {
	if c.err != nil {
		return
	}
	c.ino++
	nlink := 1
	if mode&0o170000 == 0o040000 {
		nlink = 2
	}
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, len(data), 0, 0, 0, 0, len(name)+1, 0)
	c.write([]byte(hdr))
	c.write([]byte(name + "\x00"))
	c.pad(len(hdr) + len(name) + 1)
	c.write(data)
	c.pad(len(data))
}

func (c *cpioWriter) write(b []byte) {
	if c.err == nil {
		_, c.err = c.w.Write(b)
	}
}

func (c *cpioWriter) pad(n int) {
	if r := n % 4; r != 0 {
		c.write(make([]byte, 4-r))
	}
}

func (c *cpioWriter) dir(name string)                         { c.entry(name, 0o040755, nil) }
func (c *cpioWriter) file(name string, perm uint32, b []byte) { c.entry(name, 0o100000|perm, b) }
func (c *cpioWriter) trailer()                                { c.entry("TRAILER!!!", 0, nil) }

// result is what one VM reported.
type result struct {
	k        kernel
	pkg      *kernelPkg
	took     time.Duration
	booted   bool
	done     bool
	rc       map[string]int // test package -> exit status
	passed   int
	skipped  int
	failed   []string
	output   map[string][]string // failed test -> what it printed
	check    *checkReport
	checkErr string
	err      error
	log      string
}

func (r result) ok() bool {
	if r.err != nil || !r.done || len(r.failed) > 0 {
		return false
	}
	for _, rc := range r.rc {
		if rc != 0 {
			return false
		}
	}
	return len(r.rc) == 2
}

func (r result) line() string {
	name := fmt.Sprintf("%-15s %-24s", r.k, r.pkg.release)
	took := r.took.Round(time.Second)
	switch {
	case r.ok():
		return fmt.Sprintf("%s PASS  %d passed, %d skipped (%v; console: %s)", name, r.passed, r.skipped, took, r.log)
	case r.err != nil:
		return fmt.Sprintf("%s FAIL  %v (%v; console: %s)", name, r.err, took, r.log)
	case len(r.failed) > 0:
		return fmt.Sprintf("%s FAIL  %d failed: %s; %d passed (%v; console: %s)", name, len(r.failed), strings.Join(r.failed, " "), r.passed, took, r.log)
	default:
		return fmt.Sprintf("%s FAIL  test binaries exited %v without a failing test (%v; console: %s)", name, r.rc, took, r.log)
	}
}

// why is what the failed tests printed, indented, for a log that has only
// the harness's output (CI): the console file may be gone by the time it is read.
func (r result) why() string {
	var b strings.Builder
	for _, name := range r.failed {
		lines := r.output[name]
		if len(lines) == 0 {
			continue
		}
		fmt.Fprintf(&b, "    %s %s:\n", r.k, name)
		for _, l := range lines {
			fmt.Fprintf(&b, "    | %s\n", l)
		}
	}
	return b.String()
}

// maxFailLines bounds what why prints of one test.
const maxFailLines = 40

// checkReport is `tcpstate check -o json`.
type checkReport struct {
	Kernel   string `json:"kernel"`
	Arch     string `json:"arch"`
	Usable   bool   `json:"usable"`
	Error    string `json:"error"`
	Features []struct {
		Name   string `json:"name"`
		OK     bool   `json:"ok"`
		Detail string `json:"detail"`
	} `json:"features"`
}

var (
	failLine = regexp.MustCompile(`^\s*--- FAIL: (\S+)`)
	testLine = regexp.MustCompile(`^=== (?:RUN|CONT|NAME|PAUSE)\s+(\S+)`)
	passLine = regexp.MustCompile(`^\s*--- PASS: `)
	skipLine = regexp.MustCompile(`^\s*--- SKIP: `)
)

// console reads a VM's console into a result: the harness's lines, and go
// test's verbose output.
type console struct {
	r       *result
	check   bytes.Buffer        // tcpstate check's output
	current string              // the test printing now
	printed map[string][]string // the last lines each test printed
}

func newConsole(r *result) *console {
	if r.rc == nil {
		r.rc = map[string]int{}
	}
	if r.output == nil {
		r.output = map[string][]string{}
	}
	return &console{r: r, printed: map[string][]string{}}
}

func (c *console) read(line string) {
	r := c.r
	switch {
	case strings.HasPrefix(line, "vmtest: kernel "):
		r.booted = true
	case strings.HasPrefix(line, "vmtest: check "):
		c.check.WriteString(strings.TrimPrefix(line, "vmtest: check ") + "\n")
	case strings.HasPrefix(line, "vmtest: result "):
		var pkgName string
		var rc int
		if _, err := fmt.Sscanf(line, "vmtest: result %s %d", &pkgName, &rc); err == nil {
			r.rc[pkgName] = rc
		}
	case line == "vmtest: done":
		r.done = true
	case testLine.MatchString(line):
		c.current = testLine.FindStringSubmatch(line)[1]
	case failLine.MatchString(line):
		name := failLine.FindStringSubmatch(line)[1]
		if !slices.Contains(r.failed, name) {
			r.failed = append(r.failed, name)
			r.output[name] = c.printed[name]
		}
	case passLine.MatchString(line):
		r.passed++
	case skipLine.MatchString(line):
		r.skipped++
	case c.current != "" && strings.HasPrefix(line, "    "):
		p := append(c.printed[c.current], strings.TrimPrefix(line, "    "))
		c.printed[c.current] = p[max(len(p)-maxFailLines, 0):]
	}
}

// boot runs one VM to its end and reads its console.
func boot(ctx context.Context, k kernel, pkg *kernelPkg, initrd string, o options) result {
	r := result{k: k, pkg: pkg}
	logDir := filepath.Join(o.cache, "logs")
	_ = os.MkdirAll(logDir, 0o755)
	r.log = filepath.Join(logDir, pkg.release+".log")
	logf, err := os.Create(r.log)
	if err != nil {
		r.err = err
		return r
	}
	defer logf.Close()

	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	args := []string{"-accel", o.accel, "-smp", "2", "-m", "1536", "-kernel", pkg.vmlinuz, "-initrd", initrd,
		"-display", "none", "-serial", "stdio", "-monitor", "none", "-nodefaults", "-no-reboot"}
	console := "ttyS0"
	if k.Arch == "arm64" {
		// pauth-impdef: QEMU's cheaper pointer authentication, much faster under TCG.
		args = append([]string{"-M", "virt", "-cpu", "max,pauth-impdef=on"}, args...)
		console = "ttyAMA0"
	} else {
		args = append([]string{"-cpu", o.cpu}, args...)
	}
	args = append(args, "-append", "console="+console+" panic=-1 oops=panic loglevel=4")
	cmd := exec.CommandContext(ctx, qemuBinary(k.Arch), args...)
	out, err := cmd.StdoutPipe()
	if err != nil {
		r.err = err
		return r
	}
	cmd.Stderr = logf
	begin := time.Now()
	if err := cmd.Start(); err != nil {
		r.err = err
		return r
	}
	sc := bufio.NewScanner(io.TeeReader(out, logf))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	c := newConsole(&r)
	for sc.Scan() {
		line := strings.TrimRight(sc.Text(), "\r")
		if o.verbose {
			fmt.Printf("%s| %s\n", k, line)
		}
		c.read(line)
	}
	werr := cmd.Wait()
	r.took = time.Since(begin)
	for _, l := range strings.Split(c.check.String(), "\n") {
		if strings.HasPrefix(l, "{") {
			var c checkReport
			if json.Unmarshal([]byte(l), &c) == nil {
				r.check = &c
			}
		} else if strings.TrimSpace(l) != "" {
			r.checkErr += strings.TrimSpace(l) + " "
		}
	}
	switch {
	case ctx.Err() != nil:
		r.err = fmt.Errorf("timed out after %v", o.timeout)
	case !r.booted:
		r.err = fmt.Errorf("the VM did not boot (qemu: %v)", werr)
	case !r.done:
		r.err = errors.New("the VM stopped before the tests ended (kernel panic?)")
	}
	return r
}

// writeFeatures rewrites the kernel table of a README between markers.
func writeFeatures(path string, results []result) error {
	const begin, end = "<!-- vmtest:features -->\n", "<!-- /vmtest:features -->"
	b, err := os.ReadFile(path)
	if err != nil {
		return err
	}
	s := string(b)
	i, j := strings.Index(s, begin), strings.Index(s, end)
	if i < 0 || j < i {
		return fmt.Errorf("%s has no %s...%s section", path, strings.TrimSpace(begin), end)
	}
	var names []string
	for _, r := range results {
		if r.check == nil {
			continue
		}
		for _, f := range r.check.Features {
			if !slices.Contains(names, f.Name) {
				names = append(names, f.Name)
			}
		}
	}
	var t strings.Builder
	t.WriteString("| kernel | tests |")
	for _, n := range names {
		t.WriteString(" " + n + " |")
	}
	t.WriteString("\n|---|---|" + strings.Repeat("---|", len(names)) + "\n")
	for _, r := range results {
		status := "pass"
		if !r.ok() {
			status = "**fail**"
		}
		fmt.Fprintf(&t, "| %s %s (Debian %s %s) | %s, %d passed |", r.pkg.release, strings.Split(r.pkg.version, "-")[0], r.k.Suite, r.k.Arch, status, r.passed)
		for _, n := range names {
			cell := "?"
			if r.check != nil {
				for _, f := range r.check.Features {
					if f.Name == n {
						cell = "yes"
						if !f.OK {
							cell = "no"
						}
					}
				}
			}
			t.WriteString(" " + cell + " |")
		}
		t.WriteString("\n")
	}
	fmt.Fprintf(&t, "\nFrom `go run ./scripts/vmtest -features README.md` on %s.\n", time.Now().UTC().Format("2006-01-02"))
	s = s[:i+len(begin)] + t.String() + s[j:]
	return os.WriteFile(path, []byte(s), 0o644)
}
