#!/usr/bin/env bash
# deps.sh: make sure the tools sluice's build, lab, demo and tests need are
# present. Idempotent: installs only what is missing (apt, Debian/Ubuntu),
# runs `apt-get update` only when something has to be installed, mounts bpffs
# when it is not mounted. Never downloads Go: Go >= 1.26 must already be
# installed (it is looked for at /usr/local/go/bin when not on PATH).
#
# Prints `export PATH=...` hints on stderr when Go is not on PATH; callers
# (the Makefile) find Go themselves.
#
#   scripts/deps.sh            what build, demo and tests need
#   scripts/deps.sh --bench    also nginx and HAProxy, the peers the
#                              benchmarks compare sluice with (installed with
#                              their services kept stopped: the benchmarks run
#                              their own instances inside the lab)
set -euo pipefail

log() { printf 'deps: %s\n' "$*" >&2; }
die() { printf 'deps: error: %s\n' "$*" >&2; exit 1; }

bench=0
for arg in "$@"; do
	case $arg in
	--bench) bench=1 ;;
	*) die "usage: deps.sh [--bench]" ;;
	esac
done

# command -> Debian package providing it
declare -A tool_pkg=(
	[clang]=clang
	[llvm-strip]=llvm
	[bpftool]=bpftool
	[ip]=iproute2
	[nft]=nftables
	[ethtool]=ethtool
	[wrk]=wrk
	[curl]=curl
	[nsenter]=util-linux
	[jq]=jq
)

# vagrant: deploy/deploy_test.go runs `vagrant validate` on the Vagrantfile;
# the Vagrant VMs themselves set SLUICE_DEPS_VAGRANT=0.
if [[ ${SLUICE_DEPS_VAGRANT:-1} != 0 ]]; then
	tool_pkg[vagrant]=vagrant
fi

if ((bench)); then
	tool_pkg[nginx]=nginx
	tool_pkg[haproxy]=haproxy
fi

missing=()
for tool in "${!tool_pkg[@]}"; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		missing+=("${tool_pkg[$tool]}")
	fi
done
# Headers: libbpf-dev (bpf/bpf_helpers.h) and linux-libc-dev (linux/bpf.h).
if [[ ! -f /usr/include/bpf/bpf_helpers.h ]]; then
	missing+=(libbpf-dev)
fi
if [[ ! -f /usr/include/linux/bpf.h ]]; then
	missing+=(linux-libc-dev)
fi

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
	if [[ ! -e /usr/sbin/policy-rc.d ]]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
		chmod 755 /usr/sbin/policy-rc.d
		trap 'rm -f /usr/sbin/policy-rc.d' EXIT
	fi
	apt-get update -q
	# Debian ships bpftool in its own package; older releases only in linux-tools.
	if ! apt-get install -y -q --no-install-recommends "${missing[@]}"; then
		die "apt-get install ${missing[*]} failed"
	fi
else
	log "all tools present"
fi

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
