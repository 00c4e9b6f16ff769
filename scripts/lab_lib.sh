# lab_lib.sh: helpers shared by the scripts that run sluice in a lab
# (demo.sh, dashboard.sh). Source it; the caller sets state (the lab's
# state directory) and id (the lab's ID).

# admin_socket: the agent's admin socket, under $state unless that path is
# too long for a unix socket (108 bytes), then under /tmp/sluice-$id.
admin_socket() {
	local s=$state/admin.sock
	if ((${#s} > 100)); then
		s=/tmp/sluice-$id/admin.sock
		mkdir -p "$(dirname "$s")"
	fi
	printf '%s\n' "$s"
}
