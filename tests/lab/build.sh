#!/usr/bin/env bash
# Builds the lab guest image (shared/LAB.md): a Debian bookworm VM whose real kernel, IOMMU and sysfs behave
# like a passthrough host's. The result is cached outside the repo, keyed by a hash of this file (the whole
# recipe lives here, guest config included, so tests/lab/lab.ts can compute the same key):
#
#   ${PULUMI_VFIO_LAB_CACHE:-$HOME/.cache/pulumi-vfio-lab}/<hash>/
#     lab.img (ext4, label labroot)  vmlinuz  initrd.img  id_ed25519(.pub)  manifest.json
#
# A run with an unchanged recipe only checks the host packages and prints the cache path.
# Environment: PULUMI_VFIO_LAB_CACHE (cache root), PULUMI_VFIO_LAB_MIRROR (Debian mirror; default: the
# bookworm mirror from the host's apt sources), PULUMI_VFIO_LAB_KEEP (images of other recipes kept, default 1).
set -euo pipefail

SELF="${BASH_SOURCE[0]}"
CACHE_ROOT="${PULUMI_VFIO_LAB_CACHE:-$HOME/.cache/pulumi-vfio-lab}"
FULL_HASH=$(sha256sum "$SELF" | cut -d' ' -f1)
HASH=${FULL_HASH:0:16}   # tests/lab/lab.ts: recipeHash() must agree
FINAL="$CACHE_ROOT/$HASH"
SUITE=bookworm
START=$(date +%s)

log() { printf '[lab:build %3ss] %s\n' "$(($(date +%s) - START))" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

# --- host packages ------------------------------------------------------------------------------------
# debootstrap/qemu/e2fsprogs/ssh per LAB.md; gcc (12) + make + xz-utils build the mdev samples against the
# guest kernel's headers (Debian builds its 6.1 kernel with gcc-12, the compiler the headers expect).
# ovmf + fdisk (sfdisk) + mtools + dosfstools: the UEFI boot path through GRUB (esp-grub.img, the boot-configuration lab test).
HOST_PKGS=(debootstrap qemu-system-x86 qemu-utils e2fsprogs openssh-client gcc make xz-utils util-linux fdisk ovmf mtools dosfstools)

ensure_host_packages() {
  local missing=() p
  for p in "${HOST_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "missing host packages (${missing[*]}); run as root or install them"
  log "installing host packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # apt-get update only when the lists are too old to install from.
  apt-get install -y -q --no-install-recommends "${missing[@]}" >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
}
ensure_host_packages

if [ -f "$FINAL/manifest.json" ]; then
  log "up to date (recipe $HASH): $FINAL"
  echo "$FINAL"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || die "building the image needs root (debootstrap, chroot)"

# --- mirror: the one the host's apt uses for bookworm itself (not -security/-updates) ----------------------
find_mirror() {
  [ -n "${PULUMI_VFIO_LAB_MIRROR:-}" ] && { echo "$PULUMI_VFIO_LAB_MIRROR"; return; }
  local m=""
  if [ -f /etc/apt/sources.list ]; then
    m=$(awk -v s="$SUITE" '$1=="deb" { i=2; if ($2 ~ /^\[/) { while ($i !~ /\]$/) i++; i++ } if ($(i+1)==s) { print $i; exit } }' /etc/apt/sources.list)
  fi
  if [ -z "$m" ]; then
    for f in /etc/apt/sources.list.d/*.sources; do
      [ -f "$f" ] || continue
      # deb822: paragraphs separated by blank lines; take URIs of a paragraph whose Suites has the suite.
      m=$(awk -v s="$SUITE" 'BEGIN{RS=""; FS="\n"} {
            uri=""; ok=0; deb=0
            for (i=1;i<=NF;i++) {
              if ($i ~ /^URIs:/) { split(substr($i,6), a, " "); uri=a[1] }
              if ($i ~ /^Types:/ && $i ~ /(^|[ :])deb([ ]|$)/) deb=1
              if ($i ~ /^Suites:/) { n=split(substr($i,8), b, " "); for (j=1;j<=n;j++) if (b[j]==s) ok=1 }
            }
            if (ok && deb && uri!="") { print uri; exit }
          }' "$f")
      [ -n "$m" ] && break
    done
  fi
  echo "${m:-http://deb.debian.org/debian}"
}
MIRROR=$(find_mirror)

# --- work dir, lock, cleanup ---------------------------------------------------------------------------------
mkdir -p "$CACHE_ROOT"
exec 9>"$CACHE_ROOT/.lock"
log "waiting for the build lock" ; flock 9
if [ -f "$FINAL/manifest.json" ]; then   # another build finished while we waited
  log "up to date (recipe $HASH): $FINAL"; echo "$FINAL"; exit 0
fi

umount_under() {   # debootstrap mounts /proc etc. inside the target; never rm -rf through a live mount
  local dir mnts
  dir=$(readlink -f "$1")
  mnts=$(awk -v d="$dir/" 'index($2"/", d)==1 { print $2 }' /proc/mounts | sort -r)
  [ -z "$mnts" ] || echo "$mnts" | while read -r mnt; do umount -l "$mnt" 2>/dev/null || true; done
}
remove_tree() { umount_under "$1"; rm -rf --one-file-system "$1"; }

# Leftovers of interrupted builds (their owner pid is gone).
for old in "$CACHE_ROOT"/.tmp-*; do
  [ -d "$old" ] || continue
  pid=${old##*-}
  kill -0 "$pid" 2>/dev/null || { log "removing interrupted build $old"; remove_tree "$old"; }
done

WORK="$CACHE_ROOT/.tmp-$HASH-$$"
ROOT="$WORK/rootfs"
# The long steps run in their own process group in the background, so a signal to this script alone (bash
# defers traps while a foreground child runs) stops them at once, and nothing writes into $WORK while it goes.
CHILD=""
run_long() { setsid "$@" & CHILD=$!; wait "$CHILD"; local rc=$?; CHILD=""; return $rc; }
on_signal() {
  if [ -n "$CHILD" ]; then kill -TERM -- "-$CHILD" 2>/dev/null; wait "$CHILD" 2>/dev/null || true; fi
  exit 130
}
trap 'remove_tree "$WORK"' EXIT
trap on_signal INT TERM HUP
mkdir -p "$WORK"

# --- 1. debootstrap ----------------------------------------------------------------------------------------
GUEST_PKGS=linux-image-amd64,systemd-sysv,udev,kmod,iproute2,openssh-server,pciutils,qemu-system-x86,socat
GUEST_PKGS+=,ifupdown,isc-dhcp-client,procps,bash,driverctl,mdevctl,nodejs,util-linux,findutils,coreutils
# Debian's GRUB for EFI without its grub-install postinst (grub2-common: update-grub; -bin: the x86_64-efi modules).
GUEST_PKGS+=,grub-efi-amd64-bin,grub2-common
log "debootstrap $SUITE from $MIRROR (takes ~2 min)"
run_long debootstrap --variant=minbase --include="$GUEST_PKGS" "$SUITE" "$ROOT" "$MIRROR" > "$WORK/debootstrap.log" 2>&1 \
  || { tail -n 30 "$WORK/debootstrap.log" >&2; die "debootstrap failed"; }
umount_under "$ROOT"

# Installed by apt in the finished base system, not by debootstrap: debootstrap's own ordering fails configuring
# systemd-container (pulled in by libvirt). systemd-boot (bootctl, kernel-install's loader-entry plugin): the second
# boot path (esp-sdboot.img). libvirt's system daemon and virsh: the libvirt VM backend's lab tests (qemu:///system).
# policy-rc.d keeps every postinst from starting a service inside the build chroot.
EXTRA_PKGS=(systemd-boot libvirt-daemon-system libvirt-clients)
log "apt-get install ${EXTRA_PKGS[*]}"
printf '#!/bin/sh\nexit 101\n' > "$ROOT/usr/sbin/policy-rc.d"; chmod 0755 "$ROOT/usr/sbin/policy-rc.d"
mount -t proc proc "$ROOT/proc"
{ chroot "$ROOT" apt-get update -q && DEBIAN_FRONTEND=noninteractive chroot "$ROOT" apt-get install -y -q \
    --no-install-recommends "${EXTRA_PKGS[@]}"; } > "$WORK/apt.log" 2>&1 \
  || { umount_under "$ROOT"; tail -n 30 "$WORK/apt.log" >&2; die "apt-get install in the guest failed"; }
umount_under "$ROOT"
rm -f "$ROOT/usr/sbin/policy-rc.d"

KVER=$(ls "$ROOT/lib/modules" | head -n 1)
[ -n "$KVER" ] && [ -f "$ROOT/boot/vmlinuz-$KVER" ] || die "no kernel in the guest"
KPKGVER=$(chroot "$ROOT" dpkg-query -W -f='${Version}' "linux-image-$KVER")
KABI=${KVER%-amd64}
KSERIES=$(echo "$KVER" | cut -d. -f1-2)
log "guest kernel $KVER (package $KPKGVER)"

# --- 2. mdev samples (mtty, mdpy, mbochs) against the guest kernel's exact headers ------------------------------
SRC="$WORK/mdev"
mkdir -p "$SRC/debs" "$SRC/x" "$SRC/m"
DEBS=("linux-source-$KSERIES=$KPKGVER" "linux-headers-$KVER=$KPKGVER" "linux-headers-$KABI-common=$KPKGVER"
      "linux-kbuild-$KSERIES=$KPKGVER")
log "downloading ${DEBS[*]}"
( cd "$SRC/debs"
  apt-get download -q -o APT::Sandbox::User=root "${DEBS[@]}" >&2 \
    || { apt-get update -q >&2 && apt-get download -q -o APT::Sandbox::User=root "${DEBS[@]}" >&2; } )
for d in "$SRC"/debs/*.deb; do dpkg -x "$d" "$SRC/x"; done
HDR="$SRC/x/usr/src/linux-headers-$KVER"
# The headers refer to their sibling trees by absolute /usr/src and /usr/lib paths: point them into ours.
grep -rlE '/usr/(src|lib)/linux-' "$HDR/Makefile" "$SRC/x/usr/src/linux-headers-$KABI-common/Makefile" 2>/dev/null \
  | xargs -r sed -i -e "s#/usr/src/#$SRC/x/usr/src/#g" -e "s#/usr/lib/linux-kbuild#$SRC/x/usr/lib/linux-kbuild#g"
for l in $(find "$SRC/x/usr/src" -maxdepth 2 -type l); do
  t=$(readlink "$l"); case "$t" in /*) ln -sfn "$SRC/x$t" "$l" ;; esac
done
tar -xJf "$SRC/x/usr/src/linux-source-$KSERIES.tar.xz" -C "$SRC" --wildcards '*/samples/vfio-mdev/*'
cp "$SRC/linux-source-$KSERIES"/samples/vfio-mdev/{mtty.c,mdpy.c,mbochs.c,mdpy-defs.h} "$SRC/m/"
echo 'obj-m += mtty.o mdpy.o mbochs.o' > "$SRC/m/Kbuild"
log "building mtty/mdpy/mbochs"
make -s -C "$HDR" M="$SRC/m" modules > "$SRC/make.log" 2>&1 || { tail -n 30 "$SRC/make.log" >&2; die "module build failed"; }
mkdir -p "$ROOT/lib/modules/$KVER/extra"
install -m 0644 "$SRC"/m/{mtty,mdpy,mbochs}.ko "$ROOT/lib/modules/$KVER/extra/"
chroot "$ROOT" depmod -a "$KVER"
remove_tree "$SRC"

# --- 3. guest configuration ------------------------------------------------------------------------------
log "configuring the guest"
echo vfio-lab > "$ROOT/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\tvfio-lab\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$ROOT/etc/hosts"
# Root is /dev/vda, mounted rw by the kernel; a snapshot=on disk needs no fsck.
echo '/dev/vda / ext4 rw,noatime 0 0' > "$ROOT/etc/fstab"
: > "$ROOT/etc/resolv.conf"   # the guest has no DNS (restricted user networking): fail lookups at once

# SSH NIC named by MAC (lab.ts LAB_MAC): another NIC (igb in a nested test) may probe first and take eth0.
mkdir -p "$ROOT/etc/systemd/network"
cat > "$ROOT/etc/systemd/network/10-lab0.link" <<'EOF'
[Match]
MACAddress=52:54:00:4c:41:42

[Link]
Name=lab0
EOF
cat > "$ROOT/etc/network/interfaces" <<'EOF'
auto lo
iface lo inet loopback

# allow-hotplug, not auto: udev brings lab0 up as soon as it appears, and ifupdown-pre does not hold the boot
# in `udevadm settle` (7 s under TCG) waiting for every other device.
allow-hotplug lab0
iface lab0 inet static
    address 10.0.2.15/24
    gateway 10.0.2.2
EOF

mkdir -p "$ROOT/etc/ssh/sshd_config.d"
cat > "$ROOT/etc/ssh/sshd_config.d/lab.conf" <<'EOF'
UseDNS no
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
MaxSessions 64
MaxStartups 64:30:128
# No PAM: a logind session per connection costs ~0.5 s on an emulated CPU, and tests ssh a lot.
UsePAM no
PrintMotd no
PrintLastLog no
EOF
ssh-keygen -q -t ed25519 -N '' -C pulumi-vfio-lab -f "$WORK/id_ed25519"
chmod 0600 "$WORK/id_ed25519"
install -d -m 0700 "$ROOT/root/.ssh"
install -m 0600 "$WORK/id_ed25519.pub" "$ROOT/root/.ssh/authorized_keys"

# mdev + samples at boot; vfio-pci stays loadable on demand (the provider's modprobe path is under test).
printf 'mdev\nmtty\nmbochs\n' > "$ROOT/etc/modules-load.d/lab.conf"

chroot "$ROOT" systemctl mask -q apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
  fstrim.timer e2scrub_reap.service 2>/dev/null || true
for t in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer fstrim.timer; do
  ln -sfn /dev/null "$ROOT/etc/systemd/system/$t"
done
# root keeps the "*" password debootstrap gives it: no password login, and not "!"-locked, which sshd without
# PAM would take as a locked account and refuse even the key.

# A small initramfs (virtio disk + ext4 only) unpacks in a fraction of the time of MODULES=most under TCG.
echo 'MODULES=list' > "$ROOT/etc/initramfs-tools/conf.d/lab"
printf '%s\n' virtio_pci virtio_blk ext4 crc32c_generic >> "$ROOT/etc/initramfs-tools/modules"
chroot "$ROOT" update-initramfs -u -k "$KVER" > "$WORK/initramfs.log" 2>&1 \
  || { cat "$WORK/initramfs.log" >&2; die "update-initramfs failed"; }

# --- 3b. a real boot path: OVMF -> esp-grub.img (GRUB) -> /boot/grub/grub.cfg on the root disk -------------------
# The -kernel path never reads a boot loader file; tests/lab/boot.lab.test.ts boots this way instead, so what
# BootConfig writes is what boots. Its command line starts without intel_iommu=on iommu=pt (Debian's 6.1 kernel
# enables the emulated VT-d by itself, so the groups exist anyway; the test checks the parameters arrive).
cat > "$ROOT/etc/default/grub" <<'EOF'
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=Debian
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="console=ttyS0 net.ifnames=0 panic=-1"
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB_DISABLE_RECOVERY=true
EOF
# update-grub needs the guest's own root device (grub-probe), so the first grub.cfg is written here; the lab test
# runs update-grub in the guest before anything else.
mkdir -p "$ROOT/boot/grub"
cat > "$ROOT/boot/grub/grub.cfg" <<EOF
set timeout=0
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
menuentry 'Debian GNU/Linux (lab, first boot)' {
  search --no-floppy --label labroot --set=root
  linux /boot/vmlinuz-$KVER root=/dev/vda ro console=ttyS0 net.ifnames=0 panic=-1
  initrd /boot/initrd.img-$KVER
}
EOF
# A standalone GRUB on the ESP finds the root disk by label and reads its grub.cfg.
printf 'search --no-floppy --label labroot --set=root\nconfigfile ($root)/boot/grub/grub.cfg\n' > "$ROOT/tmp/lab-embed.cfg"
chroot "$ROOT" grub-mkstandalone -O x86_64-efi -o /tmp/BOOTX64.EFI \
  --modules="part_gpt ext2 fat search search_label configfile linux normal serial terminal echo" \
  "boot/grub/grub.cfg=/tmp/lab-embed.cfg" > "$WORK/grub.log" 2>&1 || { cat "$WORK/grub.log" >&2; die "grub-mkstandalone failed"; }
mv "$ROOT/tmp/BOOTX64.EFI" "$WORK/BOOTX64.EFI"; rm -f "$ROOT/tmp/lab-embed.cfg"
# The ESP as a GPT disk image, without loop devices: the FAT file system is made in a file, filled with mtools,
# and written at the partition's offset (2048 sectors).
truncate -s 34M "$WORK/esp-grub.img"
printf 'label: gpt\nstart=2048, size=65536, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP\n' | sfdisk -q "$WORK/esp-grub.img" >/dev/null
mkfs.vfat -C -n LABESP "$WORK/esp.fat" 32768 >/dev/null
mmd -i "$WORK/esp.fat" ::/EFI ::/EFI/BOOT
mcopy -i "$WORK/esp.fat" "$WORK/BOOTX64.EFI" ::/EFI/BOOT/BOOTX64.EFI
dd if="$WORK/esp.fat" of="$WORK/esp-grub.img" bs=512 seek=2048 conv=notrunc status=none
rm -f "$WORK/esp.fat" "$WORK/BOOTX64.EFI"

# --- 3c. the second boot path: OVMF -> esp-sdboot.img (systemd-boot) -> its own loader entry ---------------------
# Unlike GRUB's, systemd-boot's kernel, initrd and entries live on the ESP itself, so this ESP is the guest's
# /efi (fstab by label, noauto: the other boot paths have no such disk) and kernel-install writes into it. The first
# entry is the one kernel-install's loader-entry plugin would write (entry token = the fixed machine-id below), so
# the guest's own `kernel-install add` replaces it rather than adding a second. The disk mounts when udev has seen it
# (SYSTEMD_WANTS), not as a boot job with a device timeout: under TCG udev tags it 10-20 s after systemd starts
# waiting (a 5 s timeout left /efi unmounted on a real systemd-boot boot), and on the boot paths without that disk a
# longer timeout would hold the boot "starting" (is-system-running) for as long.
MACHINE_ID=4c41427066696f6c61626d616368696e
echo "$MACHINE_ID" > "$ROOT/etc/machine-id"
mkdir -p "$ROOT/efi" "$ROOT/etc/kernel"
echo 'LABEL=LABSDBOOT /efi vfat umask=0077,noauto 0 0' >> "$ROOT/etc/fstab"
echo 'ACTION=="add", SUBSYSTEM=="block", ENV{ID_FS_LABEL}=="LABSDBOOT", ENV{SYSTEMD_WANTS}+="efi.mount"' \
  > "$ROOT/etc/udev/rules.d/70-lab-esp.rules"
echo 'root=/dev/vda ro console=ttyS0 net.ifnames=0 panic=-1' > "$ROOT/etc/kernel/cmdline"
echo "$MACHINE_ID" > "$ROOT/etc/kernel/entry-token"
SDBOOT_EFI="$ROOT/usr/lib/systemd/boot/efi/systemd-bootx64.efi"
[ -f "$SDBOOT_EFI" ] || die "no systemd-bootx64.efi in the guest"
truncate -s 160M "$WORK/esp-sdboot.img"
printf 'label: gpt\nstart=2048, size=323584, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP\n' | sfdisk -q "$WORK/esp-sdboot.img" >/dev/null
mkfs.vfat -C -F 32 -n LABSDBOOT "$WORK/sd.fat" 161792 >/dev/null
mmd -i "$WORK/sd.fat" ::/EFI ::/EFI/BOOT ::/EFI/systemd ::/loader ::/loader/entries "::/$MACHINE_ID" "::/$MACHINE_ID/$KVER"
mcopy -i "$WORK/sd.fat" "$SDBOOT_EFI" ::/EFI/BOOT/BOOTX64.EFI
mcopy -i "$WORK/sd.fat" "$SDBOOT_EFI" ::/EFI/systemd/systemd-bootx64.efi
printf 'timeout 0\ndefault %s-*\n' "$MACHINE_ID" > "$WORK/loader.conf"
mcopy -i "$WORK/sd.fat" "$WORK/loader.conf" ::/loader/loader.conf
printf 'title Debian GNU/Linux (lab, systemd-boot)\nversion %s\nmachine-id %s\nsort-key debian\noptions %s\nlinux /%s/%s/linux\ninitrd /%s/%s/initrd\n' \
  "$KVER" "$MACHINE_ID" "$(cat "$ROOT/etc/kernel/cmdline")" "$MACHINE_ID" "$KVER" "$MACHINE_ID" "$KVER" > "$WORK/entry.conf"
mcopy -i "$WORK/sd.fat" "$WORK/entry.conf" "::/loader/entries/$MACHINE_ID-$KVER.conf"
mcopy -i "$WORK/sd.fat" "$ROOT/boot/vmlinuz-$KVER" "::/$MACHINE_ID/$KVER/linux"
mcopy -i "$WORK/sd.fat" "$ROOT/boot/initrd.img-$KVER" "::/$MACHINE_ID/$KVER/initrd"
dd if="$WORK/sd.fat" of="$WORK/esp-sdboot.img" bs=512 seek=2048 conv=notrunc status=none
rm -f "$WORK/sd.fat" "$WORK/loader.conf" "$WORK/entry.conf"

# libvirt: socket-activated only (libvirtd at every boot costs seconds under TCG and most tests never use it); no
# default NAT network (its dnsmasq is not installed and the lab's domains need none); libvirt-guests would try to
# suspend domains at every lab shutdown.
chroot "$ROOT" systemctl disable -q libvirtd.service 2>/dev/null || true
chroot "$ROOT" systemctl enable -q libvirtd.socket libvirtd-ro.socket libvirtd-admin.socket 2>/dev/null || true
chroot "$ROOT" systemctl mask -q libvirt-guests.service 2>/dev/null || true
rm -f "$ROOT/etc/libvirt/qemu/networks/autostart/default.xml"

# Smaller image: documentation and package caches are of no use in a throwaway VM.
rm -rf "$ROOT"/usr/share/doc/* "$ROOT"/usr/share/man/* "$ROOT"/usr/share/info/* \
       "$ROOT"/var/cache/apt/archives/*.deb "$ROOT"/var/lib/apt/lists/*_Packages "$ROOT"/var/log/*.log

# --- 4. pack -----------------------------------------------------------------------------------------------
cp "$ROOT/boot/vmlinuz-$KVER" "$WORK/vmlinuz"
cp "$ROOT/boot/initrd.img-$KVER" "$WORK/initrd.img"
pkg_json=$(chroot "$ROOT" dpkg-query -W -f='${Package}\t${Version}\n' \
  | awk -F'\t' 'BEGIN{ORS=""} { printf "%s\n    \"%s\": \"%s\"", (NR>1?",":""), $1, $2 }')
log "mkfs.ext4 (3G)"
run_long mkfs.ext4 -q -F -L labroot -d "$ROOT" "$WORK/lab.img" 3G >/dev/null
remove_tree "$ROOT"

cat > "$WORK/manifest.json" <<EOF
{
  "hash": "$FULL_HASH",
  "dir": "$HASH",
  "suite": "$SUITE",
  "mirror": "$MIRROR",
  "kernelVersion": "$KVER",
  "kernelPackageVersion": "$KPKGVER",
  "builtAt": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  "buildSeconds": $(($(date +%s) - START)),
  "packages": {$pkg_json
  }
}
EOF
rm -f "$WORK"/*.log
mv -T "$WORK" "$FINAL"
trap - EXIT

# Keep disk use modest: drop images of other recipes beyond the newest PULUMI_VFIO_LAB_KEEP.
keep=${PULUMI_VFIO_LAB_KEEP:-1}
n=0
for m in $(ls -1dt "$CACHE_ROOT"/*/manifest.json 2>/dev/null); do
  d=$(dirname "$m")
  [ "$d" = "$FINAL" ] && continue
  n=$((n + 1))
  [ "$n" -le "$keep" ] && continue
  log "removing old image $d"; rm -rf --one-file-system "$d"
done

log "built $FINAL ($(du -sh "$FINAL" | cut -f1) on disk)"
echo "$FINAL"
