#!/usr/bin/env bash
# Installs everything the controller (and the lab on this machine) needs: Debian packages,
# the pinned Python venv in .venv, and the BPF objects. Safe to run again: it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

DEBIAN_PACKAGES=(
  # build the datapath once, on the controller
  clang llvm libbpf-dev bpftool make
  # the runtime on nodes (and on lab nodes, which are this machine)
  libbpf1 iproute2 python3 python3-venv python3-yaml python3-kubernetes python3-dnspython kmod
  # the lab: the store, the CNI reference plugins, what pods run
  etcd-server etcd-client containernetworking-plugins nginx-light busybox-static curl iputils-ping
  iptables ipset nftables
  dnsmasq-base  # the lab's world namespace answers names "on the internet" (upstream_dns_servers)
  git
  # build the upstream components (Kubernetes, etcd, containerd, runc) from the Go module proxy
  libseccomp-dev libseccomp2
  # the lab's pod images (lab/images.py): pause is compiled, the rest are these packages' files
  gcc libc6-dev netbase bash ca-certificates bind9-dnsutils netcat-openbsd socat tcpdump procps
  iperf3 sockperf  # bench/datapath.py's load generators
  prometheus chromium  # tests: scrape the Hubble metrics, render the Hubble page headless
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "bootstrap: installing Debian packages: ${missing[*]}"
  apt-get update -qq
  # Debian's policy-rc.d convention: packaged services (etcd, nginx, prometheus) are not started on
  # install, so nothing listens in the root namespace even for a moment. Ours is removed afterwards.
  own_policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ -n "$own_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi

# The Debian packages may ship services (etcd, nginx, prometheus) that start on install; the lab runs its own
# instances inside network namespaces, so make sure the host-wide ones are not left listening.
for svc in etcd nginx prometheus; do
  if command -v systemctl >/dev/null 2>&1 && systemctl is-system-running >/dev/null 2>&1; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
  pkill -x "$svc" 2>/dev/null || true
done

# The controller venv uses Debian's python3 so that Debian's python3-* bindings stay usable.
if [ ! -x .venv/bin/ansible-playbook ] || ! cmp -s requirements.txt .venv/.requirements.txt; then
  echo "bootstrap: creating .venv from requirements.txt"
  /usr/bin/python3 -m venv .venv
  .venv/bin/pip install -q --upgrade pip
  .venv/bin/pip install -q -r requirements.txt
  cp requirements.txt .venv/.requirements.txt
fi

echo "bootstrap: building BPF objects"
make -s artifacts
# Go comes with the machine (/usr/local/go); a non-login shell may not have it on PATH.
command -v go >/dev/null 2>&1 || export PATH="$PATH:/usr/local/go/bin"
# Kubernetes, etcd, containerd and runc, pinned in roles/apiary_defaults/defaults/main/download.yml,
# built once into the lab's files_repo (about 10 minutes on a fresh machine, seconds when cached).
make -s upstream
