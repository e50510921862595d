#!/usr/bin/env bash
# Runs the collector's tests (kernel tests included) and the agent's smoke
# test on another kernel than the host's: in a qemu guest under software
# emulation (TCG), booted from an initramfs that holds busybox, static test
# binaries, the agent, ip and nft, and the kernel modules they need. The
# results are read back from the guest's serial console.
#
#   internal/vmtest/run.sh [KERNEL]
#
# KERNEL is one of
#   debian-6.1   Debian 12's linux-image-cloud-amd64 (Linux 6.1), the kernel
#                class of Debian 12, Amazon Linux 2023 and GKE's COS: the
#                default, and what CI runs;
#   ubuntu-5.15  Ubuntu 22.04's generic kernel (Linux 5.15), fetched from
#                archive.ubuntu.com;
#   DIR          an unpacked kernel package: DIR/boot/vmlinuz-* and
#                DIR/lib/modules/*.
#
# Needs Go, and Debian's qemu-system-x86, busybox-static, cpio, kmod,
# iproute2, nftables, openssl and curl.
# Environment:
#   VM_CACHE    where kernel packages are kept between runs (bin/vm)
#   VM_TIMEOUT  seconds the guest may run before it is killed (1200)
#   VM_CPUS     virtual CPUs (2); VM_MEM  MiB of memory (2048)
#   VM_RUN      the collector tests to run, a -test.run pattern (all)
#   KEEP        a directory that keeps the console log
# Exits 0 only if every test binary in the guest passed.
set -euo pipefail
cd "$(dirname "$0")/../.."

die() { echo "vmtest: $*" >&2; exit 1; }
kernel=${1:-debian-6.1}
cache=${VM_CACHE:-bin/vm}
timeout=${VM_TIMEOUT:-1200}
for tool in qemu-system-x86_64 busybox cpio depmod modprobe ip nft openssl curl; do
  command -v "$tool" >/dev/null || die "$tool is needed (apt-get install qemu-system-x86 busybox-static cpio kmod iproute2 nftables openssl curl)"
done
go=$(command -v go || echo /usr/local/go/bin/go)

mkdir -p "$cache"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# fetch_deb NAME URL unpacks a package into $cache/NAME, once.
unpack() {
  local dir=$cache/$1
  shift
  if [[ -d $dir/boot ]]; then echo "$dir"; return; fi
  rm -rf "$dir.tmp"
  mkdir -p "$dir.tmp"
  local deb
  for deb in "$@"; do dpkg-deb -x "$deb" "$dir.tmp"; done
  mv "$dir.tmp" "$dir"
  echo "$dir"
}

case $kernel in
  debian-6.1)
    # The metapackage names the current ABI; its package is what is fetched.
    pkg=$(apt-cache depends linux-image-cloud-amd64 | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
    [[ -n $pkg ]] || die "apt-cache knows no linux-image-cloud-amd64 (apt-get update?)"
    if [[ ! -d $cache/$pkg/boot ]]; then
      (cd "$work" && apt-get download -q "$pkg" >/dev/null 2>&1) || die "apt-get download $pkg failed"
      kdir=$(unpack "$pkg" "$work"/"$pkg"_*.deb)
    else
      kdir=$cache/$pkg
    fi ;;
  ubuntu-5.15)
    # The newest 5.15 generic kernel of jammy-updates, and its modules.
    mirror=http://archive.ubuntu.com/ubuntu
    curl -fsS "$mirror/dists/jammy-updates/main/binary-amd64/Packages.xz" | xz -d >"$work/Packages" ||
      die "cannot read $mirror's package index"
    abi=$(awk '/^Package: linux-image-5\.15\.0-[0-9]+-generic$/ {split($2, p, "-"); print p[4]}' "$work/Packages" | sort -n | tail -1)
    [[ -n $abi ]] || die "no 5.15 generic kernel in $mirror's jammy-updates"
    pkg=linux-image-5.15.0-$abi-generic
    if [[ ! -d $cache/$pkg/boot ]]; then
      debs=()
      for p in "$pkg" "linux-modules-5.15.0-$abi-generic"; do
        f=$(awk -v p="$p" '$1 == "Package:" {hit = ($2 == p)} hit && $1 == "Filename:" {print $2; exit}' "$work/Packages")
        curl -fsS -o "$work/${f##*/}" "$mirror/$f" || die "download $f failed"
        debs+=("$work/${f##*/}")
      done
      kdir=$(unpack "$pkg" "${debs[@]}")
    else
      kdir=$cache/$pkg
    fi ;;
  *)
    [[ -d $kernel/boot ]] || die "unknown kernel $kernel: want debian-6.1, ubuntu-5.15 or an unpacked package"
    kdir=$kernel ;;
esac
vmlinuz=$(find "$kdir/boot" -name 'vmlinuz-*' | head -1)
[[ -n $vmlinuz ]] || die "$kdir/boot has no vmlinuz"
kver=${vmlinuz##*/vmlinuz-}
[[ -d $kdir/lib/modules/$kver ]] || die "$kdir has no modules for $kver"
echo "vmtest: kernel $kver from $kdir"

root=$work/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/modules,var}
ln -s ../run "$root/var/run"
echo "--- build"
export CGO_ENABLED=0
"$go" test -c -o "$root/bin/collector.test" ./collector
"$go" test -c -o "$root/bin/callscope.test" ./cmd/callscope
"$go" build -trimpath -o "$root/bin/callscope" ./cmd/callscope
# Tests read their testdata relative to their package's directory.
for pkg in collector cmd/callscope; do
  mkdir -p "$root/src/$pkg"
  (cd "$pkg" && find . -type d -name testdata -prune -exec cp -r --parents {} "$root/src/$pkg/" \;)
done
# The JSON Schema the tests check events against, found from go.mod up.
cp go.mod "$root/src/"
mkdir -p "$root/src/docs" && cp docs/callscope-v1.schema.json "$root/src/docs/"

cp "$(command -v busybox)" "$root/bin/busybox"
for a in sh mount mkdir cat echo sleep poweroff insmod uname mknod ln rm ls; do ln -s busybox "$root/bin/$a"; done
# The host's ip, nft, openssl and curl, with the libraries they link.
for tool in ip nft openssl curl; do
  bin=$(command -v "$tool")
  cp "$bin" "$root/bin/$tool"
  ldd "$bin" | awk '/=> \// {print $3} /^\t\/lib/ {print $1}' | while read -r lib; do
    mkdir -p "$root/$(dirname "$lib")"
    cp -L "$lib" "$root/$lib"
  done
done
mkdir -p "$root/lib64"
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
# The modules the tests' network namespaces need, in load order.
depmod -b "$kdir" "$kver"
for m in veth nf_tables nft_reject_inet; do
  modprobe -d "$kdir" -S "$kver" --show-depends "$m" | awk '$1 == "insmod" {print $2}'
done | awk '!seen[$0]++' >"$work/modules"
: >"$root/modules.list"
while read -r ko; do
  cp "$ko" "$root/lib/modules/"
  echo "/lib/modules/${ko##*/}" >>"$root/modules.list"
done <"$work/modules"
cp internal/vmtest/init "$root/init"
chmod +x "$root/init"
printf '%s\n' "${VM_RUN:-.}" >"$root/vm_run"
(cd "$root" && find . | cpio -o -H newc --quiet) | gzip -1 >"$work/initrd.gz"
echo "vmtest: initramfs $(du -h "$work/initrd.gz" | cut -f1)"

echo "--- boot $kver (TCG, ${VM_CPUS:-2} CPUs)"
start=$(date +%s)
set +e
timeout -k 10 "$timeout" qemu-system-x86_64 -accel tcg -cpu max -smp "${VM_CPUS:-2}" -m "${VM_MEM:-2048}" \
  -display none -vga none -nic none -no-reboot -serial stdio -monitor none \
  -kernel "$vmlinuz" -initrd "$work/initrd.gz" \
  -append "console=ttyS0 panic=-1 ${VM_KERNEL_ARGS:-loglevel=5} mitigations=off softlockup_panic=1" </dev/null | tr -d '\r' | tee "$work/console"
rc=${PIPESTATUS[0]}
set -e
echo "vmtest: guest ran $(($(date +%s) - start)) s"
if [[ -n ${KEEP:-} ]]; then mkdir -p "$KEEP" && cp "$work/console" "$KEEP/console-$kver.log"; fi
((rc != 124)) || die "the guest did not finish within $timeout s"

failed=0
for name in collector.test callscope.test; do
  line=$(grep -a "^vmtest: $name status " "$work/console" || true)
  if [[ -z $line ]]; then
    echo "vmtest: FAIL $name: no result from the guest" >&2
    failed=1
  elif [[ ${line##* } != 0 ]]; then
    echo "vmtest: FAIL $name: status ${line##* }" >&2
    failed=1
  else
    echo "vmtest: ok $name on $kver"
  fi
done
grep -aq '^vmtest: done' "$work/console" || { echo "vmtest: FAIL: the guest stopped before it was done" >&2; failed=1; }
exit "$failed"
