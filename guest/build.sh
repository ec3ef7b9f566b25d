#!/usr/bin/env bash
# Builds the oxvirt reference guest from Debian packages only.
#
#   guest/build.sh OUTDIR
#
# Outputs (each written atomically):
#   OUTDIR/vmlinuz      Debian's cloud kernel (linux-image-cloud-amd64)
#   OUTDIR/initrd.img   gzip'd newc initramfs: busybox-static, virtio modules, guest/init,
#                       the guest agent (AGENT: its static binary, built by `make guest`)
#   OUTDIR/disk.qcow2   MBR disk (FAT + syslinux) that boots the same kernel+initrd via BIOS
# Downloaded .debs are cached in OUTDIR/debs. Nothing is rebuilt when the
# inputs (resolved package versions, files in guest/) are unchanged; FORCE=1
# rebuilds anyway.
#
# Host tools: apt-get, apt-cache, dpkg, cpio, gzip, sfdisk, mkfs.vfat,
# syslinux, mcopy, qemu-img (scripts/install-deps.sh installs them).
set -euo pipefail
export PATH="$PATH:/usr/sbin:/sbin" # sfdisk, mkfs.vfat for non-root PATHs

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

if [ $# -ne 1 ] || [ -z "$1" ]; then
	echo "usage: AGENT=oxvirt-guest-agent $0 OUTDIR" >&2
	exit 2
fi
AGENT=${AGENT:-}
[ -n "$AGENT" ] && [ -x "$AGENT" ] || { echo "$0: AGENT must name the guest agent's static binary (make guest builds it)" >&2; exit 2; }

# Modules wanted in the initramfs; dependencies are added from modules.dep,
# built-in ones are skipped. sd_mod gives disks on virtio-scsi; button and
# evdev give the ACPI power button as /dev/input/event* for acpid.
MODULES=(virtio_pci virtio_blk virtio_net virtio_balloon virtio_console virtio_mmio
	virtio_scsi virtio_rng sd_mod button evdev pvpanic_mmio pvpanic_pci)
KERNEL_META=linux-image-cloud-amd64
DISK_MIB=64
# Kernel messages on VGA too (when there is one); /dev/console, the marker and
# the shell are on the last one, ttyS0.
APPEND="console=tty0 console=ttyS0 panic=-1"
MBR_BIN=/usr/lib/syslinux/mbr/mbr.bin

log() { echo "guest/build.sh: $*" >&2; }
die() { log "error: $*"; exit 1; }

for t in apt-get apt-cache dpkg dpkg-deb cpio gzip sfdisk mkfs.vfat syslinux mcopy qemu-img sha256sum; do
	command -v "$t" >/dev/null || die "missing host tool '$t' (run scripts/install-deps.sh)"
done
[ -r "$MBR_BIN" ] || die "missing $MBR_BIN (package syslinux-common)"

mkdir -p "$1/debs"
OUT=$(cd "$1" && pwd)
DEBS=$OUT/debs

# One build per OUTDIR at a time.
if command -v flock >/dev/null; then
	exec 9>"$OUT/.build.lock"
	flock 9
fi

WORK=$(mktemp -d "$OUT/.work.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# --- packages ------------------------------------------------------------------

# candidates PKG...: fills CAND[pkg]=version from one apt-cache policy call.
declare -A CAND=()
candidates() {
	local pkg="" line
	while IFS= read -r line; do
		case "$line" in
		[!\ ]*:) pkg=${line%:} ;;
		*Candidate:*) CAND[$pkg]=$(echo "$line" | awk '{print $2}') ;;
		esac
	done < <(apt-cache policy "$@" 2>/dev/null)
}

# fetch PKG: prints the path of the cached .deb of PKG's candidate version,
# downloading it with apt-get download when missing. When apt knows no
# candidate, falls back to the newest cached .deb of PKG.
fetch() {
	local pkg=$1 ver f tmp
	ver=${CAND[$pkg]:-}
	if [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
		f=$(ls -1 "$DEBS/${pkg}_"*.deb 2>/dev/null | sort -V | tail -n1)
		[ -n "$f" ] || die "apt knows no candidate for $pkg and none is cached (apt-get update?)"
		log "apt has no candidate for $pkg; using cached $(basename "$f")"
		echo "$f"
		return
	fi
	# apt-get download names files PKG_VERSION_ARCH.deb, with ':' as %3a.
	f=$(ls -1 "$DEBS/${pkg}_${ver//:/%3a}_"*.deb 2>/dev/null | head -n1)
	if [ -z "$f" ]; then
		log "downloading $pkg=$ver"
		tmp=$(mktemp -d "$DEBS/.dl.XXXXXX")
		local opts=()
		[ "$(id -u)" -eq 0 ] && opts=(-o APT::Sandbox::User=root)
		if ! (cd "$tmp" && apt-get download -q "${opts[@]}" "$pkg=$ver" >&2); then
			rm -rf "$tmp"
			die "apt-get download $pkg=$ver failed"
		fi
		f=$(ls -1 "$tmp/${pkg}_"*.deb 2>/dev/null | head -n1)
		[ -n "$f" ] || { rm -rf "$tmp"; die "apt-get download $pkg=$ver left no .deb"; }
		dpkg-deb --info "$f" >/dev/null 2>&1 || { rm -rf "$tmp"; die "downloaded $pkg is not a valid .deb"; }
		mv "$f" "$DEBS/"
		f=$DEBS/$(basename "$f")
		rm -rf "$tmp"
	fi
	echo "$f"
}

# prune GLOB KEEP: removes cached .debs matching GLOB except KEEP (older versions).
prune() {
	local old
	for old in $1; do
		[ -e "$old" ] && [ "$old" != "$2" ] && { log "removing stale $(basename "$old")"; rm -f "$old"; }
	done
	return 0
}

# The meta package depends on the versioned image package, e.g.
# linux-image-6.1.0-56-cloud-amd64.
kpkg=$(apt-cache depends "$KERNEL_META" 2>/dev/null |
	awk '$1 == "Depends:" && $2 ~ /^linux-image-[0-9].*-cloud-amd64$/ {print $2; exit}') || true
if [ -z "$kpkg" ]; then
	kdeb=$(ls -1 "$DEBS"/linux-image-[0-9]*-cloud-amd64_*.deb 2>/dev/null | sort -V | tail -n1)
	[ -n "$kdeb" ] || die "cannot resolve $KERNEL_META (apt-get update?) and no kernel .deb cached"
	log "cannot resolve $KERNEL_META; using cached $(basename "$kdeb")"
else
	candidates "$kpkg" busybox-static kmod
	kdeb=$(fetch "$kpkg")
fi
[ -n "$kpkg" ] || candidates busybox-static kmod
bbdeb=$(fetch busybox-static)
kmoddeb=$(fetch kmod)
prune "$DEBS/linux-image-[0-9]*-cloud-amd64_*.deb" "$kdeb"
prune "$DEBS/busybox-static_*.deb" "$bbdeb"
prune "$DEBS/kmod_*.deb" "$kmoddeb"

# --- up to date? -----------------------------------------------------------------
stamp=$({
	basename "$kdeb"; basename "$bbdeb"; basename "$kmoddeb"
	echo "${MODULES[*]}|$KERNEL_META|$DISK_MIB|$APPEND"
	cat "$HERE/build.sh" "$HERE/init" "$HERE/udhcpc.script" "$AGENT"
} | sha256sum | cut -d' ' -f1)
if [ "${FORCE:-0}" != 1 ] && [ -s "$OUT/vmlinuz" ] && [ -s "$OUT/initrd.img" ] && [ -s "$OUT/disk.qcow2" ] &&
	[ "$(cat "$OUT/.stamp" 2>/dev/null)" = "$stamp" ]; then
	log "up to date ($OUT)"
	exit 0
fi
rm -f "$OUT/.stamp"

log "kernel $(basename "$kdeb")"
log "busybox $(basename "$bbdeb")"
dpkg -x "$kdeb" "$WORK/kernel"
dpkg -x "$bbdeb" "$WORK/busybox"
dpkg -x "$kmoddeb" "$WORK/kmod"

kver=$(ls -1 "$WORK/kernel/lib/modules")
[ "$(echo "$kver" | wc -l)" -eq 1 ] || die "expected one module tree in $(basename "$kdeb"), got: $kver"
[ -f "$WORK/kernel/boot/vmlinuz-$kver" ] || die "no boot/vmlinuz-$kver in $(basename "$kdeb")"
KMOD=$WORK/kernel/lib/modules/$kver

# --- depmod ----------------------------------------------------------------------
# The image package ships no modules.dep (its postinst runs depmod); run the
# depmod of Debian's kmod package (the host's if that one cannot run).
# kmod picks its personality from argv[0], so call it through a symlink named depmod.
mkdir -p "$WORK/kmodbin"
ln -s "$WORK/kmod/bin/kmod" "$WORK/kmodbin/depmod"
if "$WORK/kmodbin/depmod" -V >/dev/null 2>&1; then
	DEPMOD=$WORK/kmodbin/depmod
elif command -v depmod >/dev/null; then
	DEPMOD=$(command -v depmod)
	log "kmod from $(basename "$kmoddeb") does not run here; using the host's depmod"
else
	die "cannot run depmod (neither kmod from $(basename "$kmoddeb") nor the host's)"
fi
depmod_run() { "$DEPMOD" -b "$1" "$kver"; } # depmod_run BASEDIR
depmod_run "$WORK/kernel"
[ -s "$KMOD/modules.dep" ] || die "depmod produced no modules.dep"

# --- resolve modules ---------------------------------------------------------------
norm() { local n=${1##*/}; n=${n%%.ko*}; echo "${n//-/_}"; }

declare -A DEP=() BYNAME=() BUILTIN=() SEEN=()
while IFS= read -r line; do
	path=${line%%:*}
	DEP[$path]=${line#*:}
	BYNAME[$(norm "$path")]=$path
done <"$KMOD/modules.dep"
while IFS= read -r path; do
	[ -n "$path" ] && BUILTIN[$(norm "$path")]=1
done <"$KMOD/modules.builtin"

ORDER=()
visit() { # post-order DFS: dependencies first
	local p=$1 d
	[ -n "${SEEN[$p]:-}" ] && return
	SEEN[$p]=1
	for d in ${DEP[$p]}; do visit "$d"; done
	ORDER+=("$p")
}
builtin_list=()
for m in "${MODULES[@]}"; do
	n=$(norm "$m")
	if [ -n "${BUILTIN[$n]:-}" ]; then
		builtin_list+=("$m")
		continue
	fi
	[ -n "${BYNAME[$n]:-}" ] || die "module $m is neither built into $kver nor in its modules.dep"
	visit "${BYNAME[$n]}"
done
[ ${#builtin_list[@]} -eq 0 ] || log "built into the kernel: ${builtin_list[*]}"
log "modules (load order): $(for p in "${ORDER[@]}"; do norm "$p"; done | tr '\n' ' ')"

# --- initramfs tree ------------------------------------------------------------------
R=$WORK/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,run,tmp,root,var/log,etc/oxvirt,etc/acpi/PWRF}
mkdir -p "$R/lib/modules/$kver"
chmod 1777 "$R/tmp"
chmod 700 "$R/root"

install -m 0755 "$WORK/busybox/bin/busybox" "$R/bin/busybox"
while IFS= read -r applet; do
	[ -n "$applet" ] || continue
	[ -e "$R/$applet" ] || [ -L "$R/$applet" ] || ln -s /bin/busybox "$R/$applet"
done < <("$WORK/busybox/bin/busybox" --list-full)
[ -L "$R/bin/sh" ] || die "busybox provides no sh"

install -m 0755 "$HERE/init" "$R/init"
install -m 0755 "$AGENT" "$R/sbin/oxvirt-guest-agent"
install -m 0755 "$HERE/udhcpc.script" "$R/etc/udhcpc.script"
printf '#!/bin/sh\nsync\nexec poweroff -f\n' >"$R/etc/acpi/PWRF/00000080"
chmod 0755 "$R/etc/acpi/PWRF/00000080"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$R/etc/passwd"
printf 'root:x:0:\ntty:x:5:\n' >"$R/etc/group"
printf 'oxvirt-guest\n' >"$R/etc/hostname"
printf 'export PS1='"'"'\\h:\\w\\$ '"'"'\n' >"$R/etc/profile"
: >"$R/etc/resolv.conf"
# The kernel opens /dev/console for init before devtmpfs is mounted.
mknod -m 600 "$R/dev/console" c 5 1 2>/dev/null || log "cannot mknod dev/console (not root?): early init output is lost"

: >"$R/etc/oxvirt/modules"
for p in "${ORDER[@]}"; do
	src=$KMOD/$p
	dst=${p%.xz}; dst=${dst%.zst}; dst=${dst%.gz}
	mkdir -p "$R/lib/modules/$kver/$(dirname "$p")"
	case "$p" in
	*.ko) cp "$src" "$R/lib/modules/$kver/$dst" ;;
	*.ko.xz) xz -dc "$src" >"$R/lib/modules/$kver/$dst" ;;
	*.ko.zst) zstd -qdc "$src" >"$R/lib/modules/$kver/$dst" ;;
	*.ko.gz) gzip -dc "$src" >"$R/lib/modules/$kver/$dst" ;;
	*) die "unknown module format: $p" ;;
	esac
	echo "$dst" >>"$R/etc/oxvirt/modules"
done
cp "$KMOD/modules.builtin" "$KMOD/modules.builtin.modinfo" "$R/lib/modules/$kver/"
cp "$R/etc/oxvirt/modules" "$R/lib/modules/$kver/modules.order"
# modules.dep etc. for the modules present, so busybox modprobe works in the guest.
depmod_run "$R"
rm -f "$R/lib/modules/$kver"/*.bin

cpio_opts=(-o -H newc -R 0:0 --quiet)
cpio --help 2>/dev/null | grep -q -- --reproducible && cpio_opts+=(--reproducible)
find "$R" -exec touch -h -d @0 {} +
(cd "$R" && find . -mindepth 1 | LC_ALL=C sort | cpio "${cpio_opts[@]}") | gzip -9n >"$WORK/initrd.img"
cp "$WORK/kernel/boot/vmlinuz-$kver" "$WORK/vmlinuz"

# --- disk image -----------------------------------------------------------------------
# MBR + one bootable FAT partition at 1 MiB holding syslinux, vmlinuz, initrd.img.
img=$WORK/disk.raw
truncate -s "${DISK_MIB}M" "$img"
echo 'start=2048, type=e, bootable' | sfdisk -q --label dos "$img"
dd if="$MBR_BIN" of="$img" bs=440 count=1 conv=notrunc status=none
mkfs.vfat -n OXVIRT -i 0a7f1a7e --offset 2048 "$img" $(((DISK_MIB - 1) * 1024)) >/dev/null
syslinux --offset $((2048 * 512)) --install "$img"
cat >"$WORK/syslinux.cfg" <<EOF
DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  LINUX vmlinuz
  INITRD initrd.img
  APPEND $APPEND
EOF
export MTOOLS_SKIP_CHECK=1
mcopy -i "$img@@1M" -o "$WORK/vmlinuz" "$WORK/initrd.img" "$WORK/syslinux.cfg" ::/
qemu-img convert -f raw -O qcow2 "$img" "$WORK/disk.qcow2"

# --- publish ---------------------------------------------------------------------------
for f in vmlinuz initrd.img disk.qcow2; do
	mv -f "$WORK/$f" "$OUT/$f"
done
echo "$stamp" >"$OUT/.stamp"
log "built $OUT/{vmlinuz,initrd.img,disk.qcow2} (kernel $kver, initrd $(du -k "$OUT/initrd.img" | cut -f1) KiB)"
