#!/usr/bin/env bash
# Installs the Debian packages oxvirt needs, only those that are missing.
# Usage: scripts/install-deps.sh
#   qemu-system-x86 brings qemu-system-common, which has qemu-storage-daemon (nbd pools);
#   prometheus (with promtool) is for the monitoring tests; nftables and dnsmasq-base serve
#   networks (firewall, DHCP); iputils-ping is for the network tests (ping -M do); etcd-server
#   is the cluster store (and its tests), protobuf-compiler builds its client; openvswitch-switch
#   (ovsdb-server, ovs-vswitchd with the userspace datapath, ovs-ofctl) is the SDN switch.
set -euo pipefail

want=(qemu-system-x86 qemu-utils busybox-static cpio e2fsprogs syslinux syslinux-common
      mtools dosfstools fdisk iproute2 procps prometheus nftables dnsmasq-base iputils-ping
      etcd-server etcd-client protobuf-compiler libprotobuf-dev openvswitch-switch)

missing=()
for p in "${want[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

extra=()
# Some images ship qemu-utils from backports, which breaks bookworm's qemu-system-common.
# Keep QEMU's packages on one version: the one qemu-system-x86 will be installed at.
if printf '%s\n' "${missing[@]}" | grep -qx qemu-system-x86; then
  if [ "$(id -u)" -eq 0 ] && [ ! -f /var/lib/oxvirt-apt-updated ]; then
    apt-get update -qq && touch /var/lib/oxvirt-apt-updated
  fi
  qver=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/{print $2}')
  uver=$(dpkg-query -W -f='${Version}' qemu-utils 2>/dev/null || true)
  if [ -n "$qver" ] && [ -n "$uver" ] && [ "$uver" != "$qver" ]; then
    extra+=("qemu-utils=$qver" --allow-downgrades)
  fi
fi

cmd=(apt-get install -y --no-install-recommends "${missing[@]}" "${extra[@]}")
if [ "$(id -u)" -ne 0 ]; then
  echo "oxvirt needs these Debian packages: ${missing[*]}" >&2
  echo "Run as root:  apt-get update && DEBIAN_FRONTEND=noninteractive ${cmd[*]}" >&2
  exit 1
fi
echo "install-deps: installing ${missing[*]}"
if [ ! -f /var/lib/oxvirt-apt-updated ]; then apt-get update -qq && touch /var/lib/oxvirt-apt-updated; fi
DEBIAN_FRONTEND=noninteractive "${cmd[@]}" >/tmp/oxvirt-apt.log 2>&1 || { tail -20 /tmp/oxvirt-apt.log >&2; exit 1; }
