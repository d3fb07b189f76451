#!/usr/bin/env bash
# Install what banger and its tests need on Debian 12 (run as root), then banger itself:
#   - host tools with apt (only those missing);
#   - banger and its test extras into a venv of the system Python at .venv/ in this checkout
#     (Debian's Python is externally managed, PEP 668: pip must not write into it), installed
#     editable, so `banger` runs this checkout as you edit it;
#   - /usr/local/bin/banger -> .venv/bin/banger, so `banger` works in any new shell.
# BANGER_PYTHON=/path/to/python3 picks another interpreter (3.11 or newer) for the venv.
# A second run changes nothing and takes well under a second.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$(pwd -P)

packages=(
  python3 python3-venv # the venv banger lives in (Debian's python3 is externally managed)
  e2fsprogs            # mkfs.ext4, debugfs, e2fsck
  qemu-system-x86      # the QEMU backend (TCG here, KVM where it works)
  qemu-utils           # qemu-img: a VM's qcow2 disk over the cached rootfs
  busybox-static       # the generated initramfs
  cpio zstd kmod       # kernel bundles and modules
  openssh-client       # ssh-keygen for the managed key
  debootstrap          # the embedded default Debian image
  umoci skopeo         # OCI layouts, pushing to the local registry, the peer benchmark
  docker-registry      # the local registry the demo and the tests start
  apache2-utils        # htpasswd for the Basic-auth registry test
  lz4 iproute2 systemd util-linux   # tests: lz4 payloads, tap devices, systemd-analyze verify, setpriv
  nftables             # nft: outbound NAT for `banger vm create --net bridge` (banger's own table)
  git                  # tests: the cache-compatibility test runs an earlier commit's code
  time                 # GNU time: peak RSS in bench/
  make gcc flex bison bc libelf-dev libssl-dev   # `banger kernel build`: compiling Linux
  chromium chromium-driver   # tests: the dashboard in a real headless browser (Selenium)
  ca-certificates
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# tests: `npm pack` fetches opencode's package once (tests/vm/test_acp_e2e.py); any npm on PATH will do
command -v npm >/dev/null || missing+=(npm)
if [ ${#missing[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${BANGER_PYTHON:-/usr/bin/python3}
if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
  echo "setup.sh: $python is not a Python 3.11 or newer (set BANGER_PYTHON=/path/to/python3)" >&2
  exit 1
fi
venv="$here/.venv"
# the venv is rebuilt when it was made by another interpreter, or its creation did not finish
# (.banger-python is written last); a system Python upgrade that breaks it is caught the same way
interpreter=$("$python" -c 'import os, sys; print(os.path.realpath(sys.executable))')
if [ "$(cat "$venv/.banger-python" 2>/dev/null)" != "$interpreter" ] || ! "$venv/bin/python" -c '' 2>/dev/null; then
  rm -rf "$venv"
  "$python" -m venv "$venv"
  echo "$interpreter" > "$venv/.banger-python"
fi
# (re)install when the project's metadata changed since the last install, or banger is not there
stamp="$venv/.banger-install"
want=$(cat pyproject.toml setup.py | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || [ ! -x "$venv/bin/banger" ]; then
  "$venv/bin/python" -m pip install -q --disable-pip-version-check -e ".[test]"
  echo "$want" > "$stamp"
fi

link=/usr/local/bin/banger
target="$venv/bin/banger"
if [ -L "$link" ] || [ ! -e "$link" ]; then
  current=$(readlink "$link" || true)
  case "$current" in
    "$target") ;;
    "") ln -sfn "$target" "$link" ;;
    */.venv/bin/banger)  # another checkout's banger: the last one set up wins
      echo "setup.sh: $link now runs this checkout ($here), not ${current%/.venv/bin/banger}" >&2
      ln -sfn "$target" "$link" ;;
    *) echo "setup.sh: $link points to $current, not a banger venv; remove it and rerun, or run $target" >&2
       exit 1 ;;
  esac
else
  echo "setup.sh: $link exists and is not a link to a banger venv; remove it and rerun, or run $target" >&2
  exit 1
fi
