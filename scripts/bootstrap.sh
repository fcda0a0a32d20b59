#!/usr/bin/env bash
# Idempotent machine setup for Domus development/tests on Debian/Ubuntu.
# Called by `make run` and `make test`; does nothing (and takes well under 2 s) when all is in place.
set -Eeuo pipefail  # -E: the ERR trap below also fires inside functions

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"

log() { echo "domus: $*"; }
die() { echo "domus: ERROR: $*" >&2; exit 1; }
trap 'die "bootstrap failed at line $LINENO: $BASH_COMMAND"' ERR

# Run a system change as root: directly, else through sudo, else fail saying why.
as_root() {
    local sudo=()
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || die "need root (and no sudo) to run: $*"
        sudo=(sudo)
    fi
    "${sudo[@]}" "$@" || die "command failed (exit $?): $*"
}

# --- Debian packages ---------------------------------------------------------------------------
pkgs=(libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients qemu-system-x86 qemu-utils
      libvirt-dev pkg-config gcc busybox-static cpio chromium libxml2-utils
      isolinux syslinux-common xorriso  # tests/guest/build.sh: the test guest's bootable ISO
      iproute2 util-linux)  # ip, nsenter, unshare: the fleet tests give each host its own namespaces
# tests/deploy: the agent's .deb on a Debian host in a container, and docker/compose.yaml
# (dockerd; the debian:bookworm base image is debootstrapped from Debian's mirror when no registry
# is reachable; Debian's docker-compose where the Docker CLI has no `compose`).
pkgs+=(docker.io debootstrap docker-compose)
# libvirt's virtual networks: dnsmasq serves the DHCP and DNS of NAT, routed and isolated ones,
# iptables makes their NAT and firewall rules (tests/agent/test_networks_real.py runs them).
pkgs+=(dnsmasq-base iptables)
# tests/drills: PostgreSQL restarted mid-job, on a server of the drill's own (initdb, pg_ctl).
pkgs+=(postgresql)
# python3-venv: Debian splits ensurepip out of python3, so `python3 -m venv` fails without it.
python3 -c 'import ensurepip, venv' 2>/dev/null || pkgs+=(python3-venv)
# Node from anywhere (nvm, nodesource...) is fine; only install Debian's when absent.
command -v node >/dev/null || pkgs+=(nodejs)
command -v npm >/dev/null || pkgs+=(npm)

# One dpkg-query for all; unknown packages print nothing on stdout (error on stderr).
installed="$(dpkg-query -W -f='${Package} ${Status}\n' "${pkgs[@]}" 2>/dev/null |
             awk '$NF == "installed" {print $1}' || true)"
missing=()
for p in "${pkgs[@]}"; do grep -qx "$p" <<<"$installed" || missing+=("$p"); done
if ((${#missing[@]})); then
    log "installing Debian packages: ${missing[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# --- libvirt -----------------------------------------------------------------------------------
# Containers/chroots skip the postinst user setup and udev; recreate what libvirt expects.
getent group kvm >/dev/null || as_root groupadd --system kvm
getent passwd libvirt-qemu >/dev/null ||
    as_root useradd --system --gid kvm --home-dir /var/lib/libvirt --no-create-home \
        --shell /usr/sbin/nologin libvirt-qemu
[[ -d /var/log/libvirt ]] || as_root mkdir -p /var/log/libvirt
# Without udev, /dev/kvm stays root:root 0600. libvirt then sees "KVM enabled when probed but
# not usable now" and re-probes QEMU capabilities (~4 s, both cores) on EVERY API call.
# Debian's udev rule makes it root:kvm 0660; do the same. (TCG guests are unaffected.)
if [[ -c /dev/kvm && "$(stat -c '%G %a' /dev/kvm)" != "kvm 660" ]]; then
    as_root chgrp kvm /dev/kvm
    as_root chmod 0660 /dev/kvm
fi

virsh_ok() {  # not via as_root: a failure here is expected, not fatal
    local sudo=(); [[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
    "${sudo[@]}" timeout 10 virsh -c qemu:///system version >/dev/null 2>&1
}
if ! virsh_ok; then
    log "starting libvirtd"
    if [[ "$(cat /proc/1/comm 2>/dev/null)" == systemd ]]; then
        as_root systemctl start virtlogd.socket libvirtd.socket libvirtd.service
    else
        # No init system: run the daemons directly (they daemonize themselves with -d).
        pgrep -x virtlogd >/dev/null || as_root virtlogd -d
        pgrep -x libvirtd >/dev/null || as_root libvirtd -d
    fi
    for _ in $(seq 20); do virsh_ok && break; sleep 0.5; done
    virsh_ok || die "libvirtd did not come up (virsh -c qemu:///system version fails); see /var/log/libvirt/"
fi

# --- Python virtualenv -------------------------------------------------------------------------
[[ -d .venv ]] || { log "creating .venv"; python3 -m venv .venv; }
if [[ ! -f pyproject.toml ]]; then
    log "no pyproject.toml yet, skipping pip install"
elif [[ pyproject.toml -nt .venv/.domus-installed ]]; then  # -nt is true when the stamp is absent
    log "installing Python dependencies (pip install -e '.[dev]')"
    .venv/bin/pip install -q -e '.[dev]'
    touch .venv/.domus-installed
fi

# --- Node modules (xterm.js, noVNC, ...) -------------------------------------------------------
if [[ ! -f package.json ]]; then
    log "no package.json yet, skipping npm install"
elif [[ package.json -nt node_modules/.domus-installed || package-lock.json -nt node_modules/.domus-installed ]]; then
    if [[ -f package-lock.json ]]; then log "installing Node modules (npm ci)"; npm ci --no-audit --no-fund
    else log "installing Node modules (npm install)"; npm install --no-audit --no-fund; fi
    touch node_modules/.domus-installed
fi
