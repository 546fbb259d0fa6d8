#!/usr/bin/env bash
# Install what Clawpot needs on a Debian/Ubuntu host: apt packages, the Python venv (.venv, from the
# hash-checked lock), and the VM assets (kernel, rootfs, firecracker). Idempotent: a second run checks
# and returns in seconds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

APT_PACKAGES=(
  # VMMs and guest tooling
  qemu-system-x86 e2fsprogs mmdebstrap
  # networking
  iproute2 nftables
  # guest kernel build (docs/platform-notes.md §5)
  build-essential flex bison bc libelf-dev libssl-dev cpio xz-utils linux-source-6.12
  # python
  python3 python3-venv
  # process inspection used by tests and troubleshooting
  procps
)

log() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [[ $EUID -ne 0 ]]; then
  echo "bootstrap.sh: run as root (it installs packages and assets under /var/lib/clawpot)" >&2
  exit 2
fi

missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  log "apt: all ${#APT_PACKAGES[@]} packages present"
fi

# The unprivileged account VMMs run as (src/clawpot/vmm/account.py): jailed Firecracker, QEMU.
if ! id -u clawpot-vmm >/dev/null 2>&1; then
  log "user: creating system user clawpot-vmm (VMMs run as it)"
  useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin clawpot-vmm
fi

LOCK="requirements/dev.lock"
STAMP=".venv/.lock-sha256"
want="$(sha256sum "$LOCK" pyproject.toml | sha256sum | cut -d' ' -f1)"
if [[ ! -x .venv/bin/python || "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
  log "venv: installing pinned dependencies from $LOCK"
  python3 -m venv .venv
  .venv/bin/pip install -q --require-hashes -r "$LOCK"
  .venv/bin/pip install -q --no-deps --no-build-isolation -e .
  echo "$want" > "$STAMP"
else
  log "venv: up to date"
fi

log "assets: clawpot assets install"
.venv/bin/clawpot assets install
