#!/usr/bin/env bash
# deps.sh: make sure everything sluice's build, lab, demo and tests need is on
# this machine. Idempotent: installs only what is missing (apt, Debian 12),
# runs `apt-get update` only when something has to be installed, mounts bpffs
# when it is not mounted. Never downloads Go: Go >= 1.26 must already be
# installed (it is looked for at /usr/local/go/bin when not on PATH).
#
# What is checked is what the build really uses, not only commands on PATH:
# the headers the BPF programs include (libbpf-dev, linux-libc-dev, with the
# multiarch asm/ directory), the CA bundle Go's module downloads need, and at
# the end a dry run of the BPF compile (clang -M on bpf/*.c with the flags of
# bpf/gen.go) that names the header it cannot find. bpf/deps_test.go checks
# the other way round: every file that compile includes belongs to a package
# listed here (`deps.sh --print-packages`), so a header that only some
# machines have (glibc's gnu/stubs-32.h once) fails the suite, not a user.
#
#   scripts/deps.sh                    what build, demo and tests need
#   scripts/deps.sh --bench            also nginx and HAProxy, the peers the
#                                      benchmarks compare sluice with (installed
#                                      with their services kept stopped: the
#                                      benchmarks run their own instances inside
#                                      the lab)
#   scripts/deps.sh --peer backend     a multi-VM lab backend (Vagrantfile):
#   scripts/deps.sh --peer client      nginx-light / curl, ethtool; nothing else
#   scripts/deps.sh --fresh            also debootstrap, for scripts/fresh-debian.sh
#                                      (the fresh-machine check; not needed to
#                                      build, test or run sluice)
#   scripts/deps.sh --print-packages   list the Debian packages the chosen mode
#                                      installs, one a line, and exit
#
# Environment: SLUICE_DEPS_VAGRANT=0 leaves vagrant out (inside the VMs).
set -euo pipefail

log() { printf 'deps: %s\n' "$*" >&2; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

bench=0
fresh=0
print=0
peer=""
while (($#)); do
	case $1 in
	--bench) bench=1 ;;
	--fresh) fresh=1 ;;
	--print-packages) print=1 ;;
	--peer)
		shift
		[[ ${1:-} == backend || ${1:-} == client ]] || die "--peer wants backend or client"
		peer=$1
		;;
	*) die "usage: deps.sh [--bench] [--fresh] [--peer backend|client] [--print-packages]" ;;
	esac
	shift
done

# The multiarch triplet of this machine (x86_64-linux-gnu on amd64): Debian's
# linux-libc-dev keeps the arch-specific uapi headers (asm/) under it.
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null ||
	gcc -print-multiarch 2>/dev/null || echo "$(uname -m)-linux-gnu")

# What to check, as "package proof" pairs: the proof is a command that must be
# on PATH, or (starting with /) a file that must exist.
need=()
if [[ -n $peer ]]; then
	need+=("ethtool ethtool")
	if [[ $peer == backend ]]; then
		need+=("nginx-light nginx")
	else
		need+=("curl curl" "ca-certificates /etc/ssl/certs/ca-certificates.crt")
	fi
else
	need+=(
		# build
		"make make"
		"git git" # the version string, check-generated
		"ca-certificates /etc/ssl/certs/ca-certificates.crt" # go module downloads
		"clang clang"
		"llvm llvm-strip"
		"libbpf-dev /usr/include/bpf/bpf_helpers.h"
		"libbpf-dev /usr/include/bpf/bpf_endian.h"
		"linux-libc-dev /usr/include/linux/bpf.h"
		"linux-libc-dev /usr/include/$multiarch/asm/types.h"
		# lab, tests, demo
		"bpftool bpftool"
		"iproute2 ip"
		"nftables nft"
		"ethtool ethtool"
		"procps sysctl"
		"util-linux nsenter"
		"wrk wrk"
		"curl curl"
		"jq jq"
		# the multi-node lab's router and nodes (docs/scale-out.md): BIRD 2
		# speaks BGP for sluice, the agent only writes the routes it exports
		"bird2 bird"
	)
	# vagrant: deploy/deploy_test.go runs `vagrant validate` on the Vagrantfile;
	# the Vagrant VMs themselves set SLUICE_DEPS_VAGRANT=0.
	if [[ ${SLUICE_DEPS_VAGRANT:-1} != 0 ]]; then
		need+=("vagrant vagrant")
	fi
	if ((bench)); then
		need+=("nginx nginx" "haproxy haproxy")
	fi
	if ((fresh)); then
		need+=("debootstrap debootstrap")
	fi
fi

if ((print)); then
	for pair in "${need[@]}"; do
		printf '%s\n' "${pair%% *}"
	done | sort -u
	exit 0
fi

missing=()
for pair in "${need[@]}"; do
	pkg=${pair%% *}
	proof=${pair#* }
	if [[ $proof == /* ]]; then
		[[ -e $proof ]] && continue
	else
		command -v "$proof" >/dev/null 2>&1 && continue
	fi
	log "missing $proof (package $pkg)"
	[[ " ${missing[*]} " == *" $pkg "* ]] || missing+=("$pkg")
done

if ((${#missing[@]} > 0)); then
	if [[ $EUID -ne 0 ]]; then
		die "missing packages (${missing[*]}); run as root to install them"
	fi
	if ! command -v apt-get >/dev/null 2>&1; then
		die "missing packages (${missing[*]}) and no apt-get to install them"
	fi
	log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# Packages with a daemon (nginx, haproxy) must not start it on the host:
	# a policy-rc.d that refuses every start, for the time of the install.
	# A lab backend VM wants its nginx started: no policy there.
	if [[ $peer != backend && ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -q
	if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
		die "apt-get install ${missing[*]} failed"
	fi
	# Nor at the next boot: the lab and the benchmarks run these daemons in
	# their own namespaces only (a BGP daemon never in the root one). Only
	# units this run installed are disabled; one already there is the
	# operator's. systemctl disable works without a running systemd.
	if [[ $peer != backend ]] && command -v systemctl >/dev/null 2>&1; then
		for pu in "nginx nginx" "haproxy haproxy" "bird2 bird"; do
			case " ${missing[*]} " in
			*" ${pu%% *} "*) systemctl disable --quiet "${pu#* }" >/dev/null 2>&1 || true ;;
			esac
		done
	fi
	# Check again: a package that installed but does not provide what we
	# look for (renamed, split) must be named here, not later by a test.
	for pair in "${need[@]}"; do
		proof=${pair#* }
		if [[ $proof == /* ]]; then
			[[ -e $proof ]] || die "$proof still missing after installing ${pair%% *}"
		else
			command -v "$proof" >/dev/null 2>&1 || die "$proof still missing after installing ${pair%% *}"
		fi
	done
else
	log "all packages present"
fi

[[ -z $peer ]] || exit 0

# Go: never downloaded, only looked for.
go_bin=""
if command -v go >/dev/null 2>&1; then
	go_bin=$(command -v go)
elif [[ -x /usr/local/go/bin/go ]]; then
	go_bin=/usr/local/go/bin/go
	log "go is not on PATH; using $go_bin (export PATH=/usr/local/go/bin:\$PATH)"
else
	die "go >= 1.26 not found (not on PATH, not at /usr/local/go/bin); install it first"
fi
go_ver=$("$go_bin" env GOVERSION)
go_ver=${go_ver#go}
major=${go_ver%%.*}
rest=${go_ver#*.}
minor=${rest%%.*}
minor=${minor%%[!0-9]*}
if ((major < 1 || (major == 1 && minor < 26))); then
	die "go $go_ver at $go_bin is too old: need >= 1.26"
fi

# The BPF compile, dry: resolve every #include of bpf/*.c with the flags
# bpf/gen.go gives bpf2go. A header that is not there is named now, with the
# rule it breaks, instead of as a clang error in the middle of `make test`.
gen=$repo/bpf/gen.go
if [[ -f $gen ]]; then
	while IFS='|' read -r cflags src; do
		# shellcheck disable=SC2086 # cflags is a list of flags
		if ! out=$(cd "$repo/bpf" && clang -target bpfel $cflags -M "$src" 2>&1 >/dev/null); then
			die "the BPF build of bpf/$src cannot resolve its headers:
$out
every header must come from linux-libc-dev or libbpf-dev (or bpf/include/);
nothing from glibc (see docs/architecture.md, \"Building the BPF objects\")"
		fi
	done < <(sed -n 's/^\/\/go:generate .*-cflags "\([^"]*\)".* \([a-z0-9_]*\.c\)$/\1|\2/p' "$gen")
fi

# --- h2spec (issue 9, added by the l7 helper) ---------------------------
# HTTP/2 conformance tool run by l7/proxy's TestH2Spec, which `make test`
# requires (SLUICE_REQUIRE_H2SPEC=1). A Go module at a fixed version,
# fetched through the Go module proxy. As root it goes to /usr/local/bin,
# otherwise to $(go env GOPATH)/bin (the test looks there too).
h2spec_version=v2.2.1+incompatible
if ! command -v h2spec >/dev/null 2>&1 && [[ ! -x $("$go_bin" env GOPATH)/bin/h2spec ]]; then
	h2spec_bin=$("$go_bin" env GOPATH)/bin
	[[ $EUID -eq 0 ]] && h2spec_bin=/usr/local/bin
	log "installing h2spec $h2spec_version into $h2spec_bin"
	GOBIN=$h2spec_bin "$go_bin" install "github.com/summerwind/h2spec/cmd/h2spec@$h2spec_version" ||
		die "go install github.com/summerwind/h2spec/cmd/h2spec@$h2spec_version failed"
fi
# --- end h2spec -------------------------------------------------------------

# bpffs: the agent pins its maps and links there.
if [[ $EUID -eq 0 ]]; then
	if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
		mkdir -p /sys/fs/bpf
		mount -t bpf bpf /sys/fs/bpf
		log "mounted bpffs at /sys/fs/bpf"
	fi
else
	log "not root: skipping the bpffs check"
fi
