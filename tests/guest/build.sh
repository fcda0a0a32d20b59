#!/usr/bin/env bash
# Build (once) a tiny bootable test guest for end-to-end tests:
#   $DOMUS_GUEST_DIR/vmlinuz     Debian cloud kernel
#   $DOMUS_GUEST_DIR/initrd.img  busybox initramfs: prints "DOMUS-TEST-GUEST READY",
#                                gives a "guest# " shell on ttyS0, powers off on ACPI button
#   $DOMUS_GUEST_DIR/VERSION     recipe + kernel version stamp
# Boot with direct kernel boot, cmdline "console=ttyS0 quiet", domain type 'qemu' works (TCG).
# Idempotent: exits immediately when the outputs exist and the recipe is unchanged.
set -euo pipefail

RECIPE=1   # bump when the initramfs recipe changes, to force a rebuild
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${DOMUS_GUEST_DIR:-$REPO/.cache/guest}"

if [[ -s $OUT/vmlinuz && -s $OUT/initrd.img && -f $OUT/VERSION ]] &&
   [[ "$(head -n1 "$OUT/VERSION")" == "recipe=$RECIPE" ]]; then
    exit 0
fi

log() { echo "domus-guest: $*"; }
die() { echo "domus-guest: ERROR: $*" >&2; exit 1; }
SUDO=; [[ $(id -u) -eq 0 ]] || SUDO=sudo

# Tools: cpio and the static busybox (its binary is copied into the initramfs).
missing=()
for p in busybox-static cpio gzip; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    $SUDO apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"   # apt-get download drops privileges to _apt and must be able to write here

# Kernel: linux-image-cloud-amd64 is a metapackage; download the real image package it points to.
KPKG="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9].*-cloud-amd64/ {print $2; exit}')"
[[ -n $KPKG ]] || die "cannot resolve linux-image-cloud-amd64 (is this Debian with apt lists? try apt-get update)"
log "downloading $KPKG"
(cd "$WORK" && apt-get download -q "$KPKG" >/dev/null 2>&1) ||
    { $SUDO apt-get update -qq && (cd "$WORK" && apt-get download -q "$KPKG" >/dev/null); } ||
    die "apt-get download $KPKG failed"
dpkg-deb -x "$WORK"/"$KPKG"_*.deb "$WORK/deb"
KVER="${KPKG#linux-image-}"
MODDIR="$WORK/deb/lib/modules/$KVER/kernel"

# initramfs tree
R="$WORK/root"
mkdir -p "$R"/{bin,sbin,etc/acpi/PWRF,proc,sys,dev,tmp,root,lib/modules}
cp /bin/busybox "$R/bin/busybox"
for applet in $("$R/bin/busybox" --list); do
    [[ $applet == busybox ]] || ln -sf busybox "$R/bin/$applet"
done

# ACPI power button -> input event -> busybox acpid. In the cloud kernel, button and evdev
# are modules (CONFIG_ACPI_BUTTON=m, CONFIG_INPUT_EVDEV=m); copy them plus their dependencies
# (read from each .ko's modinfo "depends=", since the .deb ships no modules.dep), deps first.
MODS=()
add_mod() {
    local name=$1 ko dep
    ko="$(find "$MODDIR" -name "$name.ko" -o -name "${name//_/-}.ko" | head -n1)"
    [[ -n $ko ]] || die "module $name not found in $KPKG"
    for dep in $(grep -ao 'depends=[^[:cntrl:]]*' "$ko" | head -n1 | cut -d= -f2 | tr , ' '); do
        add_mod "$dep"
    done
    [[ " ${MODS[*]-} " == *" $(basename "$ko") "* ]] && return
    cp "$ko" "$R/lib/modules/"
    MODS+=("$(basename "$ko")")
}
for m in button evdev; do
    # skip if built in (=y): nothing to load
    grep -q "/$m.ko\$" "$WORK/deb/lib/modules/$KVER/modules.builtin" || add_mod "$m"
done
printf '%s\n' "${MODS[@]-}" > "$R/lib/modules/load-order"

# busybox acpid's default action table runs ./PWRF/00000080 (relative to /etc/acpi) on the
# power button; it must be an executable file.
printf '#!/bin/sh\nexec poweroff -f\n' > "$R/etc/acpi/PWRF/00000080"
chmod 755 "$R/etc/acpi/PWRF/00000080"
echo 'PWRF PWRF/00000080' > "$R/etc/acpid.conf"

cat > "$R/init" <<'EOF'
#!/bin/sh
export PATH=/bin:/sbin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/load-order); do insmod /lib/modules/$m; done
# evdev device nodes appear asynchronously after insmod; acpid scans /dev/input at startup.
i=0; while [ ! -e /dev/input/event0 ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i+1)); done
acpid -c /etc/acpi -a /etc/acpid.conf -l /tmp/acpid.log
hostname domus-guest
echo "DOMUS-TEST-GUEST READY"
export PS1='guest# '
# PID 1 must never exit; cttyhack gives the shell ttyS0 as controlling tty (job control, ^C).
while true; do setsid cttyhack sh -l; done
EOF
chmod 755 "$R/init"

mkdir -p "$OUT"
(cd "$R" && find . | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet | gzip -9) > "$OUT/initrd.img.tmp"
cp "$WORK"/deb/boot/vmlinuz-* "$OUT/vmlinuz.tmp"
mv "$OUT/initrd.img.tmp" "$OUT/initrd.img"
mv "$OUT/vmlinuz.tmp" "$OUT/vmlinuz"
chmod 644 "$OUT/vmlinuz" "$OUT/initrd.img"
printf 'recipe=%s\nkernel=%s\nbusybox=%s\nmodules=%s\ncmdline=console=ttyS0 quiet\n' \
    "$RECIPE" "$KPKG" "$(dpkg-query -W -f='${Version}' busybox-static)" "${MODS[*]-}" > "$OUT/VERSION"
log "built $OUT ($KPKG)"
