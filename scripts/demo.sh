#!/usr/bin/env bash
# `make demo`: start oxvirtd on ./demo-data, boot a VM from the reference guest, show its console.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
data=$root/demo-data
# oxvirt's unprivileged processes (QEMU, dnsmasq) pass through the data directory's parents, and
# oxvirt changes no directory it did not make: a checkout they cannot pass (under /root, say)
# keeps the demo's data in /var/lib instead.
if ! setpriv --reuid=65534 --regid=65534 --clear-groups test -x "$root" 2>/dev/null; then
  data=/var/lib/oxvirt-demo
fi
bin=$root/target/release
guest=$root/build/guest
export OXVIRT_SOCKET=$data/oxvirtd.sock
oxvirt() { "$bin/oxvirt" "$@"; }

mkdir -p "$data"
rm -f "$OXVIRT_SOCKET"
# The demo boots the reference guest's kernel, a host path: the administrator allows its directory.
[ -f "$data/oxvirtd.toml" ] || printf 'host_path_roots = ["%s"]\n' "$guest" > "$data/oxvirtd.toml"
# Its own session: the Ctrl-C meant for this script must not reach the daemon before the VM is stopped.
setsid "$bin/oxvirtd" --data-dir "$data" 2>"$data/oxvirtd.log" &
daemon=$!

cleanup() {
  trap - INT TERM EXIT
  echo
  echo "== stopping the demo VM and oxvirtd"
  oxvirt vm stop demo --timeout 40 >/dev/null 2>&1 || oxvirt vm kill demo >/dev/null 2>&1 || true
  kill "$daemon" 2>/dev/null || true
  wait "$daemon" 2>/dev/null || true
  echo "== stopped. The demo's data stays in $data (remove it with: rm -rf $data)"
}
trap cleanup INT TERM EXIT

for _ in $(seq 100); do oxvirt host show >/dev/null 2>&1 && break; sleep 0.1; done
if ! oxvirt host show >/dev/null 2>&1; then cat "$data/oxvirtd.log"; exit 1; fi
grep '^oxvirtd:' "$data/oxvirtd.log" || true

echo "== host"
oxvirt host show
# A fresh demo VM each time (an earlier one, even one still running, is removed first).
if oxvirt vm show demo >/dev/null 2>&1; then
  oxvirt vm kill demo >/dev/null 2>&1 || true
  oxvirt vm delete demo >/dev/null
fi
echo "== creating and starting VM demo"
oxvirt vm create demo --cpus 1 --memory 256MiB --kernel "$guest/vmlinuz" --initrd "$guest/initrd.img" \
  --cmdline "console=ttyS0" --nic --start

echo "== console of VM demo (booting under $(oxvirt host show --output json | sed -n 's/.*"accelerator": "\([a-z]*\)".*/\1/p'))"
# (The guest shell's cursor-position query is dropped so the terminal does not answer it.)
( oxvirt vm console-log demo --follow | sed -u 's/\x1b\[6n//g' ) &
follower=$!
for _ in $(seq 240); do
  oxvirt vm console-log demo 2>/dev/null | grep -q OXVIRT-GUEST-READY && break
  sleep 0.5
done
sleep 1
pkill -INT -f "oxvirt vm console-log demo --follow" || true
wait $follower 2>/dev/null || true
echo
echo "== VM demo is up. Try, in another terminal:"
echo "   export OXVIRT_SOCKET=$OXVIRT_SOCKET"
echo "   $bin/oxvirt vm list"
echo "   $bin/oxvirt vm show demo"
echo "   $bin/oxvirt vm console-log demo"
echo "   $bin/oxvirt vm console demo          (an interactive shell in the guest; Ctrl-] leaves)"
echo "   $bin/oxvirt vm pause demo; $bin/oxvirt vm resume demo"
echo "   $bin/oxvirt vm reboot demo"
echo "   $bin/oxvirt task list"
echo "== Press Ctrl-C to stop the VM and the daemon."
wait "$daemon"
