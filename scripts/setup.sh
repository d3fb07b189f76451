#!/usr/bin/env bash
# Install what banger and its tests need on Debian 12 (run as root), then banger itself.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(
  e2fsprogs            # mkfs.ext4, debugfs, e2fsck
  qemu-system-x86      # the QEMU backend (TCG here, KVM where it works)
  busybox-static       # the generated initramfs
  cpio zstd kmod       # kernel bundles and modules
  openssh-client       # ssh-keygen for the managed key
  debootstrap          # the embedded default Debian image
  umoci skopeo         # OCI layouts, pushing to the local registry, the peer benchmark
  docker-registry      # the local registry the demo and the tests start
  apache2-utils        # htpasswd for the Basic-auth registry test
  lz4 iproute2 systemd util-linux   # tests: lz4 payloads, tap devices, systemd-analyze verify, setpriv
  time                 # GNU time: peak RSS in bench/
  ca-certificates
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore ".[test]"
