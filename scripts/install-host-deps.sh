#!/usr/bin/env bash
# Install what qflow's steps and tests need on a Debian bookworm host (run as root).
#
# Gotcha: these machines ship qemu-utils 10.x from
# backports, and bookworm's qemu-system-x86 (7.2) "Breaks" it, so a plain
# `apt-get install qemu-system-x86` removes qemu-img altogether. We install
# qemu-system-x86 together with the qemu-utils of the SAME version.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# `install-host-deps.sh --man-page QFLOW`: install the manual page of the qflow
# binary QFLOW (`QFLOW man`) as man1/qflow.1 under /usr/local/share/man (or
# $QFLOW_MAN_DIR), so `man qflow` works; scripts/quickstart.sh runs it after the build.
if [ "${1:-}" = "--man-page" ]; then
  qflow=${2:?"install-host-deps: --man-page needs the qflow binary, e.g. target/release/qflow"}
  dir="${QFLOW_MAN_DIR:-/usr/local/share/man}/man1"
  mkdir -p "$dir"
  "$qflow" man > "$dir/.qflow.1.tmp"
  mv "$dir/.qflow.1.tmp" "$dir/qflow.1"
  command -v mandb >/dev/null && [ -z "${QFLOW_MAN_DIR:-}" ] && mandb -q 2>/dev/null || true
  echo "install-host-deps: installed the manual page $dir/qflow.1 (man qflow)"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "install-host-deps: run as root (apt-get needs it)" >&2
  exit 2
fi

# Every package a step kind's tools or host needs come from is here (a unit test of
# qflow-steps checks this list against the kinds), plus what tests and benchmarks use.
packages=(
  libguestfs-tools supermin linux-image-amd64   # virt-customize, its appliance and the kernel it boots
  debootstrap dpkg busybox-static fuse2fs       # offline base images, test root filesystems
  e2fsprogs fdisk xfsprogs mount coreutils kmod # mke2fs/debugfs, sfdisk, mkfs.xfs, mounts, modprobe nbd
  linux-source-6.1 flex bison bc libelf-dev libssl-dev cpio make gcc binutils   # kernel builds
  xz-utils gzip bzip2 zstd git                  # kernel source archives and checkouts
  lz4 lzop                                      # bzImage compressions a kernel's options may choose
  ninja-build hyperfine graphviz python3 curl   # benchmarks, graph --format svg
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
need_qemu=0
command -v qemu-system-x86_64 >/dev/null && command -v qemu-img >/dev/null || need_qemu=1

if [ ${#missing[@]} -eq 0 ] && [ $need_qemu -eq 0 ]; then
  echo "install-host-deps: everything is already installed"
  exit 0
fi

apt-get update -qq
if [ $need_qemu -eq 1 ]; then
  version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  echo "install-host-deps: qemu-system-x86 and qemu-utils ${version} together"
  apt-get install -y -qq --no-install-recommends --allow-downgrades \
    "qemu-system-x86=${version}" "qemu-utils=${version}" "qemu-block-extra-"
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-host-deps: installing ${missing[*]}"
  apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi
for tool in qemu-img qemu-system-x86_64 virt-customize debootstrap mke2fs; do
  command -v "$tool" >/dev/null || { echo "install-host-deps: $tool is still missing" >&2; exit 1; }
done
echo "install-host-deps: done"
