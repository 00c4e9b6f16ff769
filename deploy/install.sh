#!/usr/bin/env bash
# install.sh: install sluice as a systemd service (run by `make install`).
#
#   deploy/install.sh              install (as root, or with DESTDIR)
#   deploy/install.sh uninstall    remove the binary, unit and docs; keep the config
#
# What goes where (DESTDIR is prepended to every path, for packaging):
#   $PREFIX/bin/sluice                        the binary (bin/sluice: `make build` first)
#   $UNITDIR/sluice.service                   the unit, ExecStart pointing at that binary
#   $UNITDIR/sluice-decap.service             a dsr backend's unit (sluice decap attach --keep), not enabled
#   $SYSCONFDIR/sluice.yaml                   the example config, only if none is there
#   $LOGROTATEDIR/sluice                      rotation of /var/log/sluice/*.log, only if none is there
#   $PREFIX/share/doc/sluice/                 operations.md, scale-out.md, sluice.yaml.example
#
# Environment: DESTDIR (empty), PREFIX (/usr/local), UNITDIR
# (/etc/systemd/system), SYSCONFDIR (/etc/sluice), LOGROTATEDIR
# (/etc/logrotate.d), SLUICE_BIN (bin/sluice).
# It never starts, stops or enables the service; with no DESTDIR and a
# running systemd it runs `systemctl daemon-reload`.
set -euo pipefail

repo_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SYSCONFDIR=${SYSCONFDIR:-/etc/sluice}
LOGROTATEDIR=${LOGROTATEDIR:-/etc/logrotate.d}
SLUICE_BIN=${SLUICE_BIN:-$repo_root/bin/sluice}

bindir=$PREFIX/bin
docdir=$PREFIX/share/doc/sluice

log() { printf 'install: %s\n' "$*" >&2; }
die() { printf 'install: error: %s\n' "$*" >&2; exit 1; }

for v in PREFIX UNITDIR SYSCONFDIR LOGROTATEDIR; do
	[[ ${!v} == /* ]] || die "$v=${!v}: must be an absolute path"
done

daemon_reload() {
	if [[ -z $DESTDIR && -d /run/systemd/system ]] && command -v systemctl >/dev/null 2>&1; then
		systemctl daemon-reload
		log "systemctl daemon-reload"
	fi
}

do_install() {
	[[ -x $SLUICE_BIN ]] || die "$SLUICE_BIN missing: run 'make build' first"
	if [[ -z $DESTDIR && $EUID -ne 0 ]]; then
		die "installing to / needs root (or set DESTDIR)"
	fi

	install -d -m 0755 "$DESTDIR$bindir" "$DESTDIR$UNITDIR" "$DESTDIR$docdir"
	install -d -m 0755 "$DESTDIR$SYSCONFDIR"
	# Replace the binary through a temporary name and a rename: a running
	# agent keeps its old executable, `systemctl restart sluice` picks up
	# the new one (it adopts the pinned maps and links).
	install -m 0755 "$SLUICE_BIN" "$DESTDIR$bindir/.sluice.new"
	mv -f "$DESTDIR$bindir/.sluice.new" "$DESTDIR$bindir/sluice"
	log "$DESTDIR$bindir/sluice"

	# The units name the installed binary, config and docs.
	local unit
	for unit in sluice.service sluice-decap.service; do
		sed -e "s#/usr/local/bin/sluice#$bindir/sluice#g" \
			-e "s#/etc/sluice/sluice.yaml#$SYSCONFDIR/sluice.yaml#g" \
			-e "s#/usr/local/share/doc/sluice#$docdir#g" \
			"$repo_root/deploy/$unit" >"$DESTDIR$UNITDIR/.$unit.new"
		chmod 0644 "$DESTDIR$UNITDIR/.$unit.new"
		mv -f "$DESTDIR$UNITDIR/.$unit.new" "$DESTDIR$UNITDIR/$unit"
		log "$DESTDIR$UNITDIR/$unit"
	done

	install -m 0644 "$repo_root/deploy/sluice.yaml" "$DESTDIR$docdir/sluice.yaml.example"
	install -m 0644 "$repo_root/docs/operations.md" "$DESTDIR$docdir/operations.md"
	install -m 0644 "$repo_root/docs/scale-out.md" "$DESTDIR$docdir/scale-out.md"
	if [[ -e $DESTDIR$SYSCONFDIR/sluice.yaml ]]; then
		log "$DESTDIR$SYSCONFDIR/sluice.yaml exists: kept (example: $docdir/sluice.yaml.example)"
	else
		install -m 0644 "$repo_root/deploy/sluice.yaml" "$DESTDIR$SYSCONFDIR/sluice.yaml"
		log "$DESTDIR$SYSCONFDIR/sluice.yaml (example: edit interfaces, VIPs, backends)"
	fi
	if [[ -e $DESTDIR$LOGROTATEDIR/sluice ]]; then
		log "$DESTDIR$LOGROTATEDIR/sluice exists: kept"
	else
		install -d -m 0755 "$DESTDIR$LOGROTATEDIR"
		install -m 0644 "$repo_root/deploy/sluice.logrotate" "$DESTDIR$LOGROTATEDIR/sluice"
		log "$DESTDIR$LOGROTATEDIR/sluice"
	fi

	daemon_reload
	log "done. Next: sluice check -c $SYSCONFDIR/sluice.yaml && systemctl enable --now sluice"
}

do_uninstall() {
	if [[ -z $DESTDIR && $EUID -ne 0 ]]; then
		die "uninstalling from / needs root (or set DESTDIR)"
	fi
	rm -f -- "$DESTDIR$bindir/sluice" "$DESTDIR$UNITDIR/sluice.service" "$DESTDIR$UNITDIR/sluice-decap.service" "$DESTDIR$LOGROTATEDIR/sluice"
	rm -rf -- "${DESTDIR}${docdir:?}"
	daemon_reload
	log "removed the binary, unit, log rotation and docs; kept $SYSCONFDIR and /var/log/sluice. The data path, if any, is still attached: 'sluice teardown' before uninstalling removes it"
}

case ${1:-install} in
install) do_install ;;
uninstall) do_uninstall ;;
*)
	printf 'usage: %s [install|uninstall]\n' "$0" >&2
	exit 2
	;;
esac
