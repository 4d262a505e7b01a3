#!/usr/bin/env bash
# make bench-compare: the Go micro-benchmarks of a base revision against
# the working tree, compared with benchstat.
#
#   e2e/bench/compare.sh BASE [package...]
#
# Both trees' test binaries are built first, then run alternately, one
# round at a time (COUNT rounds, BENCH_TIME each), so that the machine's
# drift falls on both sides alike; the order within a round flips each
# round. Each binary runs in its own tree's package directory. A package
# missing from BASE is skipped with a note. Needs root (the capture and
# proxy benchmarks create network namespaces).
set -euo pipefail

base=${1:?usage: compare.sh BASE [package...]}
shift
pkgs=("$@")
((${#pkgs[@]})) || pkgs=(./internal/hbone/ ./ztunnel/inpod/ ./ztunnel/proxy/ ./cni/plugin/)
count=${COUNT:-6}
benchtime=${BENCH_TIME:-1s}
bench=${BENCH:-.}
benchstat=${BENCHSTAT:-${XDG_CACHE_HOME:-$HOME/.cache}/zmesh/bench-tools/benchstat}

root=$(git rev-parse --show-toplevel)
rev=$(git -C "$root" rev-parse --verify "$base^{commit}")
work=$(mktemp -d /tmp/zmesh-bench-compare.XXXXXX)
cleanup() {
	git -C "$root" worktree remove --force "$work/base" 2>/dev/null || true
	rm -rf "$work"
}
trap cleanup EXIT
git -C "$root" worktree add --quiet --detach "$work/base" "$rev"

# build TREE SIDE PKG: the test binary of PKG in TREE, or nothing.
build() {
	local tree=$1 side=$2 pkg=$3
	local out=$work/$side/$(echo "$pkg" | tr -c 'a-zA-Z0-9\n' _).test
	mkdir -p "$work/$side"
	if [[ ! -d $tree/$pkg ]]; then
		return 1
	fi
	(cd "$tree" && go test -c -o "$out" "$pkg") && echo "$out"
}

declare -A old new dir_old dir_new
for pkg in "${pkgs[@]}"; do
	if ! bin=$(build "$work/base" old "$pkg"); then
		echo "compare: $pkg does not build at $base; skipped" >&2
		continue
	fi
	old[$pkg]=$bin
	new[$pkg]=$(build "$root" new "$pkg")
	dir_old[$pkg]=$work/base/$pkg
	dir_new[$pkg]=$root/$pkg
done

run() { # run BINARY DIR >> file
	(cd "$2" && "$1" -test.run '^$' -test.bench "$bench" -test.benchmem -test.count 1 -test.benchtime "$benchtime")
}
echo "compare: $base ($(git -C "$root" log -1 --format=%h "$rev")) against the working tree, $count rounds of $benchtime" >&2
for ((i = 1; i <= count; i++)); do
	for pkg in "${!old[@]}"; do
		echo "compare: round $i/$count $pkg" >&2
		if ((i % 2)); then
			run "${old[$pkg]}" "${dir_old[$pkg]}" >>"$work/old.txt"
			run "${new[$pkg]}" "${dir_new[$pkg]}" >>"$work/new.txt"
		else
			run "${new[$pkg]}" "${dir_new[$pkg]}" >>"$work/new.txt"
			run "${old[$pkg]}" "${dir_old[$pkg]}" >>"$work/old.txt"
		fi
	done
done
"$benchstat" "base=$work/old.txt" "head=$work/new.txt"
