#!/usr/bin/env bash
# Build (once) a tiny bootable test guest for end-to-end tests:
#   $DOMUS_GUEST_DIR/vmlinuz      Debian cloud kernel
#   $DOMUS_GUEST_DIR/initrd.img   busybox initramfs: prints "DOMUS-TEST-GUEST READY",
#                                 gives a "guest# " shell on ttyS0 and another on the VGA
#                                 console (tty1, for the graphical console), powers off on ACPI button
#   $DOMUS_GUEST_DIR/VERSION      recipe + kernel version stamp
#   $DOMUS_GUEST_DIR/guest.iso    BIOS-bootable ISO (isolinux) wrapping the same kernel + initrd;
#                                 boots "console=ttyS0 quiet" at once (no menu, no timeout)
#   $DOMUS_GUEST_DIR/ISO-VERSION  ISO recipe + checksums of the kernel and initrd it wraps
# Boot with direct kernel boot, cmdline "console=ttyS0 quiet", or with the ISO as a CD-ROM;
# domain type 'qemu' works (TCG).
# Idempotent: each step is skipped when its outputs exist and its stamp is current.
set -euo pipefail

RECIPE=6       # bump when the initramfs recipe changes, to force a rebuild
ISO_RECIPE=1   # bump when the ISO recipe (isolinux.cfg, xorriso options) changes
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
OUT="${DOMUS_GUEST_DIR:-$REPO/.cache/guest}"

log() { echo "domus-guest: $*"; }
die() { echo "domus-guest: ERROR: $*" >&2; exit 1; }
SUDO=; [[ $(id -u) -eq 0 ]] || SUDO=sudo

kernel_current() {
    [[ -s $OUT/vmlinuz && -s $OUT/initrd.img && -f $OUT/VERSION ]] &&
        [[ "$(head -n1 "$OUT/VERSION")" == "recipe=$RECIPE" ]]
}

# The ISO's stamp: its recipe and the exact kernel + initrd it wraps (a rebuilt initrd means a
# rebuilt ISO).
iso_stamp() {
    printf 'iso-recipe=%s\n' "$ISO_RECIPE"
    (cd "$OUT" && sha256sum vmlinuz initrd.img)
}

iso_current() {
    [[ -s $OUT/guest.iso && -f $OUT/ISO-VERSION ]] && [[ "$(cat "$OUT/ISO-VERSION")" == "$(iso_stamp)" ]]
}

if kernel_current && iso_current; then
    exit 0
fi

# Install whichever of the Debian packages "$@" are missing.
need_pkgs() {
    local p missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    if ((${#missing[@]})); then
        log "installing ${missing[*]}"
        $SUDO apt-get update -qq
        $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
    fi
}

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
chmod 755 "$WORK"   # apt-get download drops privileges to _apt and must be able to write here

# --- Step 1: kernel + busybox initramfs ---------------------------------------------------------
build_kernel_initrd() {
    # Tools: cpio and the static busybox (its binary is copied into the initramfs).
    need_pkgs busybox-static cpio gzip

    # Kernel: linux-image-cloud-amd64 is a metapackage; download the real image package it
    # points to.
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
    # are modules (CONFIG_ACPI_BUTTON=m, CONFIG_INPUT_EVDEV=m); copy them plus their
    # dependencies (read from each .ko's modinfo "depends=", since the .deb ships no
    # modules.dep), deps first.
    # virtio_pci, virtio_blk and virtio_net are modules too: without them the guest sees none
    # of its virtio disks (one hot-plugged included) nor NICs; sr_mod and ata_piix let it read a
    # CD-ROM on IDE.
    MODS=()
    for m in button evdev virtio_pci virtio_blk virtio_net ata_piix sr_mod; do
        # skip if built in (=y): nothing to load
        grep -q "/$m.ko\$" "$WORK/deb/lib/modules/$KVER/modules.builtin" || add_mod "$m"
    done
    printf '%s\n' "${MODS[@]-}" > "$R/lib/modules/load-order"

    # busybox acpid's default action table runs ./PWRF/00000080 (relative to /etc/acpi) on the
    # power button; it must be an executable file.
    printf '#!/bin/sh\nexec poweroff -f\n' > "$R/etc/acpi/PWRF/00000080"
    chmod 755 "$R/etc/acpi/PWRF/00000080"
    echo 'PWRF PWRF/00000080' > "$R/etc/acpid.conf"

    # busybox udhcpc only asks; this script applies the lease (address, default route), and
    # leaves the address in /tmp/lease-<nic> for a test to read over the serial console.
    cat > "$R/etc/udhcpc.script" <<'SCRIPT'
#!/bin/sh
case "$1" in
  deconfig) ifconfig "$interface" 0.0.0.0 up ;;
  bound|renew)
    ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
    if [ -n "$router" ]; then route add default gw "${router%% *}" dev "$interface" 2>/dev/null; fi
    echo "$ip" > "/tmp/lease-$interface" ;;
esac
exit 0
SCRIPT
    chmod 755 "$R/etc/udhcpc.script"

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
# Every NIC asks for an address by DHCP, quietly (the serial console stays the tests' own): those
# present at boot at once, those hot-plugged later within a second (a udhcpc of its own for each
# eth* that has none running; its pid in /tmp/udhcpc-<nic>.pid). Ten discovers before udhcpc's
# 20 s pause, not three: a new port of a bridge with STP forwards nothing for its first 4 s, and
# libvirt's dnsmasq answers a discover only once its ping of the address it offers timed out,
# so three were often not enough and a hot-plugged card waited 30 s for its lease.
ifconfig lo 127.0.0.1 up
dhcp_every_nic() {
  for n in /sys/class/net/eth*; do
    [ -e "$n" ] || continue
    n=${n##*/}
    # Its udhcpc still running (not exited, not a zombie, not a pid reused by another command).
    pid=$(cat "/tmp/udhcpc-$n.pid" 2>/dev/null)
    case "$({ tr '\0' ' ' <"/proc/${pid:-0}/cmdline"; } 2>/dev/null)" in
      *"udhcpc -f -t 10 -i $n "*) continue ;;
    esac
    udhcpc -f -t 10 -i "$n" -s /etc/udhcpc.script -x hostname:domus-guest >>"/tmp/udhcpc-$n.log" 2>&1 &
    echo $! >"/tmp/udhcpc-$n.pid"
  done
}
dhcp_every_nic
(while sleep 1; do dhcp_every_nic; done) >/dev/null 2>&1 &
echo "DOMUS-TEST-GUEST READY"
export PS1='guest# '
# A second shell on the VGA console, so that the graphical console has something to type into.
[ -c /dev/tty1 ] && (while true; do setsid sh -c 'exec sh -l </dev/tty1 >/dev/tty1 2>&1'; done) &
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
}

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

# --- Step 2: a BIOS-bootable ISO wrapping the same kernel + initrd -------------------------------
# isolinux (El Torito, no emulation) loads /boot/vmlinuz and /boot/initrd.img straight away:
# PROMPT 0 with no UI module and no TIMEOUT boots the default label without a menu. SERIAL
# mirrors isolinux's own (brief) output on ttyS0, which helps when a boot goes wrong.
build_iso() {
    need_pkgs isolinux syslinux-common xorriso
    local tree="$WORK/iso"
    mkdir -p "$tree/isolinux" "$tree/boot"
    cp /usr/lib/ISOLINUX/isolinux.bin "$tree/isolinux/"
    cp /usr/lib/syslinux/modules/bios/ldlinux.c32 "$tree/isolinux/"   # isolinux >= 5 needs it
    cp "$OUT/vmlinuz" "$OUT/initrd.img" "$tree/boot/"
    printf '%s\n' 'SERIAL 0 115200' 'DEFAULT guest' 'PROMPT 0' 'LABEL guest' \
        '  KERNEL /boot/vmlinuz' '  INITRD /boot/initrd.img' '  APPEND console=ttyS0 quiet' \
        > "$tree/isolinux/isolinux.cfg"
    # Debian's installer ISO options: Rock Ridge + Joliet, El Torito no-emulation boot with a
    # boot info table (isolinux needs it), and an MBR so the image also boots as a disk.
    xorriso -as mkisofs -r -J -V DOMUS_TEST_GUEST \
        -b isolinux/isolinux.bin -c isolinux/boot.cat \
        -no-emul-boot -boot-load-size 4 -boot-info-table \
        -isohybrid-mbr /usr/lib/ISOLINUX/isohdpfx.bin \
        -o "$OUT/guest.iso.tmp" "$tree" >"$WORK/xorriso.log" 2>&1 ||
        { cat "$WORK/xorriso.log" >&2; die "xorriso failed"; }
    mv "$OUT/guest.iso.tmp" "$OUT/guest.iso"
    chmod 644 "$OUT/guest.iso"
    iso_stamp > "$OUT/ISO-VERSION"
    log "built $OUT/guest.iso"
}

kernel_current || build_kernel_initrd
iso_current || build_iso
