#!/usr/bin/env bash
# Vendors the libbpf headers the programs include, from the libbpf tag
# pinned below, into bpf/headers/: bpf/ (bpf_helpers.h and what it needs)
# and linux/ (the kernel's UAPI bpf.h, as libbpf ships it). linux/types.h
# is ours: the fixed-width types those headers need, without the host's
# arch-specific <asm/types.h>, so that `make generate` gives the same
# bytes on any machine.
#
#   bpf/headers/update.sh [LIBBPF]
#
# LIBBPF is a git clone of github.com/libbpf/libbpf (the tag is read from
# it); without it the tag's tarball is downloaded from GitHub. After an
# update, run `make generate` and commit the headers with the objects.
set -euo pipefail
cd "$(dirname "$0")"

tag=v1.7.0
files=(
  src/bpf_helpers.h:bpf/bpf_helpers.h
  src/bpf_helper_defs.h:bpf/bpf_helper_defs.h
  src/bpf_core_read.h:bpf/bpf_core_read.h
  src/bpf_endian.h:bpf/bpf_endian.h
  include/uapi/linux/bpf.h:linux/bpf.h
  include/uapi/linux/bpf_common.h:linux/bpf_common.h
)

src=${1:-}
if [[ -z $src ]]; then
  src=$(mktemp -d)
  trap 'rm -rf "$src"' EXIT
  curl -fsSL "https://github.com/libbpf/libbpf/archive/refs/tags/$tag.tar.gz" | tar -xz -C "$src" --strip-components=1
  show() { cat "$src/$1"; }
else
  git -C "$src" rev-parse -q --verify "refs/tags/$tag" >/dev/null || { echo "update.sh: $src has no tag $tag" >&2; exit 1; }
  show() { git -C "$src" show "$tag:$1"; }
fi
for f in "${files[@]}"; do
  show "${f%%:*}" >"${f##*:}"
done
echo "$tag" >LIBBPF_VERSION
echo "vendored libbpf $tag into $(pwd)"
