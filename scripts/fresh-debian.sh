#!/usr/bin/env bash
# fresh-debian.sh: run the README's commands on a fresh Debian 12, as a new
# user would, to prove they need nothing this machine happens to have.
#
# A minimal Debian 12 root is made with `debootstrap --variant=minbase` (the
# smallest installable system: no compiler, no make, no libc headers). It gets
# only what a user must bring before the README's first command: Go (copied
# from this machine's GOROOT; sluice never downloads Go), git (to have cloned
# the repository) and make (to type the command). The repository is cloned
# into it at a commit (HEAD by default: commit first, the working tree is not
# used), and the targets run in a chroot as root with CI=true, so a
# privileged test that skips fails. Everything else (clang, bpftool, headers,
# bpffs...) must come from scripts/deps.sh, which `make test` and `make demo`
# run first.
#
# A chroot shares this machine's kernel, so the netns lab and XDP work in it
# as on a real machine; it has its own /proc, /sys and bpffs mount. Lab
# namespaces are created by the run itself, as always, and removed by it.
#
#   sudo scripts/fresh-debian.sh                  make test, then make demo
#   sudo scripts/fresh-debian.sh test             only make test
#   sudo scripts/fresh-debian.sh --rev REV unit   another commit, another target
#   sudo scripts/fresh-debian.sh --keep ...       keep the root afterwards
#
# Environment: SLUICE_DEBIAN_MIRROR (default http://deb.debian.org/debian),
# SLUICE_FRESH_DIR (default: a new directory under /var/tmp).
# The log of the run is written to $dir/run.log and summarised at the end;
# record the result in docs/lab.md ("A fresh machine").
set -euo pipefail

log() { printf 'fresh: %s\n' "$*" >&2; }
die() { printf 'fresh: error: %s\n' "$*" >&2; exit 1; }

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
rev=HEAD
keep=0
targets=()
while (($#)); do
	case $1 in
	--rev) shift; rev=${1:?--rev wants a commit} ;;
	--keep) keep=1 ;;
	-h | --help) sed -n '2,30p' "${BASH_SOURCE[0]}"; exit 0 ;;
	-*) die "unknown option $1" ;;
	*) targets+=("$1") ;;
	esac
	shift
done
((${#targets[@]})) || targets=(test demo)

[[ $EUID -eq 0 ]] || die "run as root (debootstrap, chroot, the lab)"
mirror=${SLUICE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
security=${mirror%/debian}/debian-security
commit=$(git -C "$repo" rev-parse --verify "$rev^{commit}") || die "no commit $rev"
goroot=$({ command -v go >/dev/null && go env GOROOT; } || /usr/local/go/bin/go env GOROOT) ||
	die "go not found: the fresh root gets this machine's Go"

# debootstrap comes from deps.sh like every other tool (--fresh adds it).
"$repo/scripts/deps.sh" --fresh || die "scripts/deps.sh --fresh failed"

dir=${SLUICE_FRESH_DIR:-$(mktemp -d /var/tmp/sluice-fresh.XXXXXX)}
root=$dir/root
mkdir -p "$dir"

cleanup() {
	if ((keep)); then
		log "kept $root"
	else
		rm -rf --one-file-system "$root"
	fi
}
trap cleanup EXIT

log "debootstrap --variant=minbase bookworm into $root ($mirror)"
debootstrap --variant=minbase bookworm "$root" "$mirror" >"$dir/debootstrap.log" 2>&1 ||
	die "debootstrap failed (see $dir/debootstrap.log)"
cat >"$root/etc/apt/sources.list" <<EOF
deb $mirror bookworm main
deb $mirror bookworm-updates main
deb $security bookworm-security main
EOF
cp /etc/resolv.conf "$root/etc/resolv.conf"

for m in proc sys dev dev/pts run tmp; do
	mkdir -p "$root/$m"
done

# in_root runs a command in the fresh root, in a mount namespace of its own:
# the root is bind-mounted on itself (`ip netns add` needs / to be a mount
# point, as it is on a real machine), /proc, /sys, /dev, /run and /tmp are
# mounted fresh, and everything mounted inside (bpffs by deps.sh, the netns
# files of the lab) disappears with the namespace: nothing leaks onto this
# machine's mount table, whatever happens to the run.
in_root() {
	unshare --mount --propagation private /usr/bin/env ROOT="$root" bash -c '
		set -e
		mount --bind "$ROOT" "$ROOT"
		mount -t proc proc "$ROOT/proc"
		mount -t sysfs sysfs "$ROOT/sys"
		mount --rbind /dev "$ROOT/dev"
		mount -t tmpfs tmpfs "$ROOT/run"
		mount -t tmpfs tmpfs "$ROOT/tmp"
		exec chroot "$ROOT" /usr/bin/env -i HOME=/root TERM=dumb LANG=C.UTF-8 \
			PATH=/usr/local/go/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
			"$@"' in_root "$@"
}


# A network that intercepts TLS (a sandbox's egress proxy) signs with its own
# CA, which this machine trusts through /usr/local/share/ca-certificates. The
# fresh root gets the same local CAs, picked up when deps.sh installs
# ca-certificates; a real fresh machine has none and needs none.
if compgen -G '/usr/local/share/ca-certificates/*.crt' >/dev/null; then
	mkdir -p "$root/usr/local/share/ca-certificates"
	cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/"
	log "local CA certificates of this machine copied (TLS egress proxy)"
fi

log "what a user brings: Go ($goroot), git, make"
cp -a "$goroot" "$root/usr/local/go"
in_root bash -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -q && apt-get install -y -q --no-install-recommends git make' \
	>"$dir/prereq.log" 2>&1 || die "installing git and make failed (see $dir/prereq.log)"
git clone -q --no-local "$repo" "$root/root/sluice"
git -C "$root/root/sluice" checkout -q "$commit"

status=0
start=$(date +%s)
{
	echo "# fresh Debian 12 (debootstrap minbase), commit $commit, $(date -u +%FT%TZ)"
	echo "# kernel $(uname -r); targets: ${targets[*]}"
} >"$dir/run.log"
for target in "${targets[@]}"; do
	log "make $target (log: $dir/run.log)"
	t0=$(date +%s)
	if in_root bash -c "cd /root/sluice && CI=true make $target" >>"$dir/run.log" 2>&1; then
		log "make $target: ok ($(($(date +%s) - t0)) s)"
		echo "# make $target: ok ($(($(date +%s) - t0)) s)" >>"$dir/run.log"
	else
		status=1
		log "make $target: FAILED ($(($(date +%s) - t0)) s); last lines:"
		tail -n 30 "$dir/run.log" >&2
		echo "# make $target: FAILED" >>"$dir/run.log"
		break
	fi
done
# The tree must still be clean: generate, tests and demo leave nothing behind.
dirty=$(in_root git -C /root/sluice status --porcelain --untracked-files=all -- . ':!bin' 2>&1 || true)
if [[ -n $dirty ]]; then
	status=1
	log "the checkout is dirty after the run:"
	printf '%s\n' "$dirty" >&2
	printf '# dirty after the run:\n%s\n' "$dirty" >>"$dir/run.log"
fi
log "done in $(($(date +%s) - start)) s, status $status; log kept at $dir/run.log"
exit $status
