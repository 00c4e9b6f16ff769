#!/usr/bin/env bash
# generate.sh: regenerate bpf/'s bpf2go output (Go bindings + .o) from the C
# sources. bpf2go writes into a temporary directory (SLUICE_BPF_OUT, read by
# the go:generate lines in bpf/gen.go); only when every program compiled are
# the results moved into bpf/. A failed build (a missing header, a verifier-
# unfriendly change) therefore never deletes or half-writes the committed
# objects, and the tree stays as it was.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

GO=${GO:-$(command -v go || echo /usr/local/go/bin/go)}
export PATH="$(dirname "$GO"):$PATH"

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

if ! SLUICE_BPF_OUT=$out "$GO" generate ./bpf/...; then
	echo "generate: bpf2go failed; bpf/ left untouched" >&2
	exit 1
fi
shopt -s nullglob
files=("$out"/*)
if ((${#files[@]} == 0)); then
	echo "generate: bpf2go produced nothing in $out" >&2
	exit 1
fi
for f in "${files[@]}"; do
	dst=bpf/$(basename "$f")
	# Keep the mtime of what did not change (make, editors, go's cache).
	if ! cmp -s "$f" "$dst"; then
		mv -f "$f" "$dst"
	fi
done
