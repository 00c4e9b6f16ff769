// Package deploy holds sluice's packaging: the systemd unit, the example
// /etc/sluice/sluice.yaml, install.sh, and (at the top of the repository)
// the Vagrantfile. These tests check them without installing anything:
// `vagrant validate` on both Vagrant variants, the unit through
// systemd-analyze (or a structural check), the example config through
// config.Load, and install.sh into a temporary DESTDIR.
package deploy

import (
	"bufio"
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/sluicelb/sluice/internal/testenv"
	"github.com/sluicelb/sluice/userspace/config"
)

const (
	unitFile      = "sluice.service"
	decapUnitFile = "sluice-decap.service"
	exampleYAML   = "sluice.yaml"
	installSh     = "install.sh"
)

// repoRoot is the repository's top directory (this package is deploy/).
func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("repository root not found at %s: %v", root, err)
	}
	return root
}

// needTool returns the path of a tool the test cannot do without: a skip
// on a workstation, a failure in CI.
func needTool(t *testing.T, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err == nil {
		return p
	}
	testenv.SkipOrFail(t, "%s not installed: %s", name, install)
	return ""
}

// envWithout is os.Environ() without the named variables.
func envWithout(names ...string) []string {
	var out []string
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if !slices.Contains(names, k) {
			out = append(out, kv)
		}
	}
	return out
}

func TestVagrantValidate(t *testing.T) {
	vagrant := needTool(t, "vagrant", "apt-get install vagrant (scripts/deps.sh)")
	root := repoRoot(t)
	for _, tc := range []struct {
		name     string
		multi    bool
		machines []string
	}{
		{name: "single", machines: []string{"sluice"}},
		{name: "multi", multi: true, machines: []string{"be1", "be2", "sluice", "client"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			// --ignore-provider: no VirtualBox or libvirt here; the
			// Vagrantfile and its provisioners are still checked.
			cmd := exec.CommandContext(ctx, vagrant, "validate", "--ignore-provider", "--no-color")
			cmd.Dir = root
			tmp := t.TempDir()
			cmd.Env = append(envWithout("SLUICE_MULTI", "VAGRANT_CWD", "VAGRANT_DOTFILE_PATH", "VAGRANT_VAGRANTFILE", "VAGRANT_HOME"),
				"VAGRANT_CWD="+root,
				// keep .vagrant/ out of the checkout, ~/.vagrant.d untouched
				"VAGRANT_DOTFILE_PATH="+filepath.Join(tmp, "dot"),
				"VAGRANT_HOME="+filepath.Join(tmp, "home"),
				"VAGRANT_CHECKPOINT_DISABLE=1",
			)
			if tc.multi {
				cmd.Env = append(cmd.Env, "SLUICE_MULTI=1")
			}
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("vagrant validate: %v\n%s", err, out)
			}
			if !bytes.Contains(out, []byte("validated successfully")) {
				t.Fatalf("vagrant validate did not say the Vagrantfile validated:\n%s", out)
			}
			// "==> NAME: Ignoring provider config" names every machine defined.
			var got []string
			for _, m := range regexp.MustCompile(`(?m)^==> ([a-z0-9-]+):`).FindAllSubmatch(out, -1) {
				if name := string(m[1]); !slices.Contains(got, name) {
					got = append(got, name)
				}
			}
			slices.Sort(got)
			want := slices.Clone(tc.machines)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("machines: got %v, want %v\n%s", got, want, out)
			}
		})
	}
}

// TestVagrantfileProvisioning: the VM is provisioned by the script CI runs,
// then the demo, from the repository synced at /sluice.
func TestVagrantfileProvisioning(t *testing.T) {
	data, err := os.ReadFile(filepath.Join(repoRoot(t), "Vagrantfile"))
	if err != nil {
		t.Fatal(err)
	}
	src := string(data)
	for _, want := range []string{
		`"debian/bookworm64"`,
		`synced_folder ".", "/sluice"`,
		"scripts/deps.sh",
		"make demo",
		`ENV["SLUICE_MULTI"] == "1"`,
		"deploy/install.sh",
	} {
		if !strings.Contains(src, want) {
			t.Errorf("Vagrantfile does not contain %q", want)
		}
	}
	// deps.sh runs before make demo in the single VM's provisioning.
	demo := src[strings.Index(src, "PROVISION_DEMO ="):]
	if d, m := strings.Index(demo, "scripts/deps.sh"), strings.Index(demo, "make demo"); d < 0 || m < 0 || d > m {
		t.Errorf("PROVISION_DEMO must run scripts/deps.sh, then make demo")
	}
	// Packages come from deps.sh: an apt-get install in the Vagrantfile (Go's
	// download needs curl before the repository's scripts can run) names only
	// packages deps.sh itself installs, so the VMs and CI cannot disagree.
	out, err := exec.Command("bash", filepath.Join(repoRoot(t), "scripts/deps.sh"), "--print-packages").Output()
	if err != nil {
		t.Fatalf("deps.sh --print-packages: %v", err)
	}
	known := strings.Fields(string(out))
	for _, m := range regexp.MustCompile(`apt-get install ([^\n;|&]*)`).FindAllStringSubmatch(src, -1) {
		for _, pkg := range strings.Fields(m[1]) {
			if !strings.HasPrefix(pkg, "-") && !slices.Contains(known, pkg) {
				t.Errorf("Vagrantfile installs %s, which scripts/deps.sh does not (%v)", pkg, known)
			}
		}
	}
	for _, block := range []string{"PROVISION_BACKEND =", "PROVISION_SLUICE =", "PROVISION_DEMO ="} {
		i := strings.Index(src, block)
		if i < 0 {
			t.Errorf("Vagrantfile has no %s", block)
			continue
		}
		if end := strings.Index(src[i:], "\nSH\n"); end < 0 || !strings.Contains(src[i:i+end], "scripts/deps.sh") {
			t.Errorf("%s does not provision through scripts/deps.sh", block)
		}
	}
	if !strings.Contains(src, "scripts/deps.sh --peer client") {
		t.Errorf("the client VM does not provision through scripts/deps.sh --peer client")
	}
	// Lab addresses only: every IPv4 literal is in 198.18.0.0/15.
	for _, ip := range regexp.MustCompile(`\b\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}\b`).FindAllString(src, -1) {
		if !strings.HasPrefix(ip, "198.18.") && !strings.HasPrefix(ip, "198.19.") && ip != "255.255.255.0" {
			t.Errorf("Vagrantfile uses %s, outside 198.18.0.0/15", ip)
		}
	}
}

// unit is a parsed systemd unit: section -> key -> values in order.
type unit map[string]map[string][]string

// parseUnit is a structural parse of a unit file: comments, sections,
// Key=Value lines (no continuation lines are used in ours); anything else
// is an error.
func parseUnit(t *testing.T, data []byte) unit {
	t.Helper()
	u := unit{}
	section := ""
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		switch {
		case line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, ";"):
		case strings.HasPrefix(line, "[") && strings.HasSuffix(line, "]"):
			section = line[1 : len(line)-1]
			if _, dup := u[section]; dup {
				t.Errorf("line %d: section [%s] twice", n, section)
			}
			u[section] = map[string][]string{}
		default:
			k, v, ok := strings.Cut(line, "=")
			if !ok || section == "" || strings.ContainsAny(k, " \t") || strings.HasSuffix(line, `\`) {
				t.Errorf("line %d: not a Key=Value line of a section: %q", n, line)
				continue
			}
			u[section][k] = append(u[section][k], v)
		}
	}
	return u
}

// one returns the single value of key in section.
func (u unit) one(t *testing.T, section, key string) string {
	t.Helper()
	vs := u[section][key]
	if len(vs) != 1 {
		t.Errorf("[%s] %s: %d values %q, want one", section, key, len(vs), vs)
		return ""
	}
	return vs[0]
}

func TestUnitFile(t *testing.T) {
	data, err := os.ReadFile(unitFile)
	if err != nil {
		t.Fatal(err)
	}
	u := parseUnit(t, data)
	for _, s := range []string{"Unit", "Service", "Install"} {
		if _, ok := u[s]; !ok {
			t.Errorf("no [%s] section", s)
		}
	}
	exact := []struct{ section, key, want string }{
		{"Service", "Type", "notify"},
		{"Service", "WatchdogSec", "30s"},
		{"Service", "ExecStart", "/usr/local/bin/sluice agent -c /etc/sluice/sluice.yaml"},
		{"Service", "ExecReload", "/bin/kill -HUP $MAINPID"},
		{"Service", "KillSignal", "SIGTERM"},
		{"Service", "Restart", "on-failure"},
		{"Service", "NoNewPrivileges", "yes"},
		{"Service", "ProtectSystem", "strict"},
		{"Service", "RuntimeDirectory", "sluice"},
		{"Service", "RuntimeDirectoryMode", "0700"},
		{"Service", "LogsDirectory", "sluice"},
		{"Service", "LimitMEMLOCK", "infinity"},
		{"Install", "WantedBy", "multi-user.target"},
	}
	for _, e := range exact {
		if got := u.one(t, e.section, e.key); got != e.want {
			t.Errorf("[%s] %s=%q, want %q", e.section, e.key, got, e.want)
		}
	}
	// The least capabilities that work (docs/operations.md): exactly these,
	// never CAP_SYS_ADMIN.
	caps := strings.Fields(u.one(t, "Service", "CapabilityBoundingSet"))
	slices.Sort(caps)
	if want := []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE", "CAP_PERFMON"}; !slices.Equal(caps, want) {
		t.Errorf("CapabilityBoundingSet=%v, want %v", caps, want)
	}
	if amb := u.one(t, "Service", "AmbientCapabilities"); amb != "" {
		t.Errorf("AmbientCapabilities=%q: the agent runs as root, bounded; want empty", amb)
	}
	rw := strings.Fields(u.one(t, "Service", "ReadWritePaths"))
	for _, p := range []string{"/sys/fs/bpf", "/run/sluice"} {
		if !slices.Contains(rw, p) {
			t.Errorf("ReadWritePaths=%v lacks %s", rw, p)
		}
	}
	// bpffs is mounted before the agent, with full privileges, so the agent
	// itself never needs CAP_SYS_ADMIN.
	pre := u.one(t, "Service", "ExecStartPre")
	if !strings.HasPrefix(pre, "+") || !strings.Contains(pre, "mount -t bpf") {
		t.Errorf("ExecStartPre=%q: want a privileged (+) bpffs mount", pre)
	}

	// The example config's paths are the ones the unit makes writable.
	cfg, err := config.Load(exampleYAML)
	if err != nil {
		t.Fatalf("example config: %v", err)
	}
	if dir := filepath.Dir(cfg.Admin.Socket); !slices.Contains(rw, dir) || dir != "/run/"+u.one(t, "Service", "RuntimeDirectory") {
		t.Errorf("admin socket %s is not in the unit's RuntimeDirectory/ReadWritePaths", cfg.Admin.Socket)
	}
	if !strings.HasPrefix(cfg.Datapath.PinPath, "/sys/fs/bpf/") {
		t.Errorf("pin path %s is not under /sys/fs/bpf", cfg.Datapath.PinPath)
	}
}

// TestUnitFileSystemdAnalyze runs systemd-analyze verify on the unit, with
// ExecStart pointed at an executable that exists (it checks that), and
// fails on any complaint about the unit (unknown keys are only warnings).
func TestUnitFileSystemdAnalyze(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed; TestUnitFile checks the structure")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	for _, unit := range []string{unitFile, decapUnitFile} {
		data, err := os.ReadFile(unit)
		if err != nil {
			t.Fatal(err)
		}
		dir := t.TempDir()
		path := filepath.Join(dir, unit)
		data = bytes.ReplaceAll(data, []byte("/usr/local/bin/sluice"), []byte(self))
		if err := os.WriteFile(path, data, 0o644); err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		cmd := exec.CommandContext(ctx, sa, "verify", "--man=no", path)
		cmd.Env = append(envWithout("SYSTEMD_LOG_COLOR"), "SYSTEMD_LOG_COLOR=0")
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("systemd-analyze verify %s: %v\n%s", unit, err, out)
		}
		for _, line := range strings.Split(string(out), "\n") {
			if strings.Contains(line, unit) {
				t.Errorf("systemd-analyze verify: %s", line)
			}
		}
	}
}

// TestDecapUnitFile: the dsr backend's unit keeps the program attached
// (--keep) with the interfaces and VIPs of its environment file, with the
// capabilities it needs and a writable /proc/sys (its setup writes
// net.ipv4.conf.*).
func TestDecapUnitFile(t *testing.T) {
	u := parseUnit(t, []byte(mustRead(t, decapUnitFile)))
	for _, e := range []struct{ section, key, want string }{
		{"Service", "ExecStart", "/usr/local/bin/sluice decap attach --keep $DECAP_ARGS"},
		{"Service", "EnvironmentFile", "/etc/default/sluice-decap"},
		{"Service", "KillSignal", "SIGTERM"},
		{"Service", "Restart", "on-failure"},
		{"Service", "NoNewPrivileges", "yes"},
		{"Service", "ReadWritePaths", "/sys/fs/bpf"},
		{"Install", "WantedBy", "multi-user.target"},
	} {
		if got := u.one(t, e.section, e.key); got != e.want {
			t.Errorf("[%s] %s=%q, want %q", e.section, e.key, got, e.want)
		}
	}
	caps := strings.Fields(u.one(t, "Service", "CapabilityBoundingSet"))
	slices.Sort(caps)
	if want := []string{"CAP_BPF", "CAP_NET_ADMIN", "CAP_PERFMON"}; !slices.Equal(caps, want) {
		t.Errorf("CapabilityBoundingSet=%v, want %v", caps, want)
	}
	if _, ok := u["Service"]["ProtectKernelTunables"]; ok {
		t.Error("ProtectKernelTunables set: the setup's sysctls would fail")
	}
}

func TestExampleConfig(t *testing.T) {
	cfg, err := config.Load(exampleYAML)
	if err != nil {
		t.Fatalf("deploy/%s does not pass config.Load (sluice check): %v", exampleYAML, err)
	}
	if len(cfg.L4Services()) == 0 {
		t.Error("the example config has no L4 service")
	}
	if len(cfg.Interfaces) == 0 {
		t.Error("the example config names no interface")
	}
	if cfg.Admin.Socket != "/run/sluice/admin.sock" {
		t.Errorf("admin socket %s, want the default /run/sluice/admin.sock (the CLI's default)", cfg.Admin.Socket)
	}
}

// TestInstall runs install.sh into a temporary DESTDIR: files in place, the
// unit naming the installed binary, an existing config kept, uninstall
// keeping the config.
func TestInstall(t *testing.T) {
	needTool(t, "bash", "apt-get install bash")
	root := repoRoot(t)
	dest := t.TempDir()
	fakeBin := filepath.Join(t.TempDir(), "sluice")
	if err := os.WriteFile(fakeBin, []byte("#!/bin/sh\necho fake sluice\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(env []string, args ...string) string {
		t.Helper()
		cmd := exec.Command(filepath.Join(root, "deploy", installSh), args...)
		cmd.Env = append(envWithout("DESTDIR", "PREFIX", "UNITDIR", "SYSCONFDIR", "LOGROTATEDIR", "SLUICE_BIN"),
			append([]string{"DESTDIR=" + dest, "SLUICE_BIN=" + fakeBin}, env...)...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("install.sh %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	read := func(p string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(dest, p))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}

	run(nil)
	for p, mode := range map[string]os.FileMode{
		"/usr/local/bin/sluice":                           0o755,
		"/etc/systemd/system/sluice.service":              0o644,
		"/etc/systemd/system/sluice-decap.service":        0o644,
		"/usr/local/share/doc/sluice/scale-out.md":        0o644,
		"/etc/sluice/sluice.yaml":                         0o644,
		"/usr/local/share/doc/sluice/sluice.yaml.example": 0o644,
		"/usr/local/share/doc/sluice/operations.md":       0o644,
		"/etc/logrotate.d/sluice":                         0o644,
	} {
		fi, err := os.Stat(filepath.Join(dest, p))
		if err != nil {
			t.Errorf("not installed: %v", err)
			continue
		}
		if fi.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", p, fi.Mode().Perm(), mode)
		}
	}
	if got, want := read("/etc/systemd/system/sluice.service"), mustRead(t, unitFile); got != want {
		t.Error("with the default PREFIX the installed unit differs from deploy/sluice.service")
	}

	// An existing config is never overwritten.
	mine := "# mine\n"
	if err := os.WriteFile(filepath.Join(dest, "/etc/sluice/sluice.yaml"), []byte(mine), 0o644); err != nil {
		t.Fatal(err)
	}
	out := run([]string{"PREFIX=/opt/sluice"})
	if got := read("/etc/sluice/sluice.yaml"); got != mine {
		t.Errorf("existing config overwritten:\n%s", got)
	}
	if !strings.Contains(out, "exists: kept") {
		t.Errorf("install.sh did not say it kept the config:\n%s", out)
	}
	u := parseUnit(t, []byte(read("/etc/systemd/system/sluice.service")))
	if got, want := u.one(t, "Service", "ExecStart"), "/opt/sluice/bin/sluice agent -c /etc/sluice/sluice.yaml"; got != want {
		t.Errorf("PREFIX=/opt/sluice: ExecStart=%q, want %q", got, want)
	}
	if _, err := os.Stat(filepath.Join(dest, "/opt/sluice/bin/sluice")); err != nil {
		t.Errorf("PREFIX=/opt/sluice: %v", err)
	}
	d := parseUnit(t, []byte(read("/etc/systemd/system/sluice-decap.service")))
	if got, want := d.one(t, "Service", "ExecStart"), "/opt/sluice/bin/sluice decap attach --keep $DECAP_ARGS"; got != want {
		t.Errorf("PREFIX=/opt/sluice: the decap unit's ExecStart=%q, want %q", got, want)
	}

	run([]string{"PREFIX=/opt/sluice"}, "uninstall")
	for _, p := range []string{"/opt/sluice/bin/sluice", "/etc/systemd/system/sluice.service", "/etc/systemd/system/sluice-decap.service",
		"/opt/sluice/share/doc/sluice", "/etc/logrotate.d/sluice"} {
		if _, err := os.Stat(filepath.Join(dest, p)); !os.IsNotExist(err) {
			t.Errorf("after uninstall %s: %v, want it gone", p, err)
		}
	}
	if got := read("/etc/sluice/sluice.yaml"); got != mine {
		t.Error("uninstall touched the config")
	}
}

func mustRead(t *testing.T, p string) string {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestInspectFlowKey checks the conntrack key inspect.sh builds against the
// layout of struct ct_key in bpf/include/structs.h: saddr, daddr, sport,
// dport (network order), proto, pad[3].
func TestInspectFlowKey(t *testing.T) {
	needTool(t, "bash", "apt-get install bash")
	script := filepath.Join(repoRoot(t), "scripts", "inspect.sh")
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"198.18.0.2:40000", "198.18.1.100:80"}, "c6 12 00 02 c6 12 01 64 9c 40 00 50 06 00 00 00"},
		{[]string{"198.18.0.2:40000", "198.18.1.100:80/tcp"}, "c6 12 00 02 c6 12 01 64 9c 40 00 50 06 00 00 00"},
		{[]string{"198.18.0.10:5353", "198.18.1.101:53", "udp"}, "c6 12 00 0a c6 12 01 65 14 e9 00 35 11 00 00 00"},
		{[]string{"10.0.0.255:65535", "198.19.255.1:1/udp"}, "0a 00 00 ff c6 13 ff 01 ff ff 00 01 11 00 00 00"},
	} {
		out, err := exec.Command(script, append([]string{"key"}, tc.args...)...).CombinedOutput()
		if err != nil {
			t.Errorf("inspect.sh key %v: %v\n%s", tc.args, err, out)
			continue
		}
		if got := strings.TrimSpace(string(out)); got != tc.want {
			t.Errorf("inspect.sh key %v = %q, want %q", tc.args, got, tc.want)
		}
	}
	for _, bad := range [][]string{
		{"198.18.0.2:40000", "198.18.1.256:80"},
		{"198.18.0.2:65536", "198.18.1.100:80"},
		{"198.18.0.2", "198.18.1.100:80"},
		{"198.18.0.2:1", "198.18.1.100:80/icmp"},
	} {
		if out, err := exec.Command(script, append([]string{"key"}, bad...)...).CombinedOutput(); err == nil {
			t.Errorf("inspect.sh key %v: no error, printed %q", bad, out)
		}
	}
}
