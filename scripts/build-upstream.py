#!/usr/bin/env python3
"""Builds the pinned upstream components from the Go module proxy into a files_repo.

No download site is reachable from our machines, only the Go module proxy, so the lab and CI build
Kubernetes, etcd, containerd and runc themselves, at the versions pinned in
roles/apiary_defaults/defaults/main/download.yml, and lay them out as the upstream download sites
do (Kubespray's `files_repo`): the roles then install them exactly as they install the official
release files on real hosts, checksum files included.

    scripts/build-upstream.py [--files-repo DIR] [component ...]     (make upstream)

Each component is built from its wrapper module in upstream/<component>/ (go.mod and go.sum pin
every dependency). A component whose files are present and whose recipe (versions, go.sum, Go
version, flags) is unchanged is not built again; Go's own build cache makes a rebuild after a small
change cheap. Build times are appended to <files_repo>/build-times.json (docs/upstream.md).
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
DOWNLOAD_DEFAULTS = REPO / "roles/apiary_defaults/defaults/main/download.yml"
DEFAULT_FILES_REPO = os.environ.get("APIARY_FILES_REPO", "/var/cache/apiary/files")
ARCH = "amd64"
# Bump when a build's flags or layout change: the recipe of every component then differs.
RECIPE_REVISION = "1"
KUBE_COMMANDS = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet", "kubectl"]


def versions() -> dict:
    data = yaml.safe_load(DOWNLOAD_DEFAULTS.read_text())
    return {key: str(data[key]) for key in ("kube_version", "etcd_version", "containerd_version", "runc_version")}


def go_version() -> str:
    return subprocess.run(["go", "env", "GOVERSION"], check=True, capture_output=True, text=True).stdout.strip()


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def required_version(module_dir: Path, module: str) -> str:
    """The version upstream/<component>/go.mod requires of `module` (it must match download.yml)."""
    match = re.search(r"^\s*(?:require\s+)?%s\s+(v\S+)" % re.escape(module), (module_dir / "go.mod").read_text(), re.M)
    if not match:
        raise SystemExit("%s/go.mod does not require %s" % (module_dir, module))
    return match.group(1)


def go_build(module_dir: Path, packages: list, out_dir: Path, ldflags: str, cgo: bool = False, tags: str = "") -> None:
    env = dict(os.environ, CGO_ENABLED="1" if cgo else "0", GOFLAGS="-mod=readonly -buildvcs=false")
    argv = ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", str(out_dir) + "/"]
    if tags:
        argv += ["-tags", tags]
    subprocess.run(argv + packages, cwd=module_dir, env=env, check=True)


def _tar(out: Path, members: list) -> None:
    """A gzipped tar of (name in archive, file on disk), reproducible: fixed owner and time."""
    with open(out, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz, tarfile.open(fileobj=gz, mode="w") as tar:
            dirs = sorted({str(Path(name).parent) for name, _ in members} - {"."})
            for name in dirs:
                info = tarfile.TarInfo(name)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for name, path in sorted(members):
                info = tarfile.TarInfo(name)
                info.size, info.mode = path.stat().st_size, 0o755
                with open(path, "rb") as handle:
                    tar.addfile(info, handle)


class Component:
    """One upstream project: its wrapper module, its files in the files_repo, how to build them."""

    name = ""
    module = ""  # the module upstream/<name>/go.mod requires at the pinned version

    def __init__(self, files_repo: Path, pinned: dict):
        self.files_repo = files_repo
        self.pinned = pinned
        self.module_dir = REPO / "upstream" / self.name

    @property
    def version(self) -> str:
        return self.pinned["%s_version" % self.name]

    def files(self) -> list:
        raise NotImplementedError

    def build(self, work: Path) -> None:
        raise NotImplementedError

    def check_pin(self) -> None:
        want = "v" + self.version
        have = required_version(self.module_dir, self.module)
        if have != want:
            raise SystemExit("upstream/%s/go.mod requires %s %s but download.yml pins %s: update one of them"
                             % (self.name, self.module, have, want))

    def recipe(self) -> str:
        """What the built files depend on; a change means building again."""
        digest = hashlib.sha256()
        for part in (RECIPE_REVISION, self.version, go_version(), (self.module_dir / "go.sum").read_text()):
            digest.update(part.encode())
        return digest.hexdigest()

    def stamp(self) -> Path:
        return self.files_repo / ".stamps" / self.name

    def up_to_date(self) -> bool:
        return all(path.exists() for path in self.files()) and \
            self.stamp().exists() and self.stamp().read_text() == self.recipe()


class Kubernetes(Component):
    name, module = "kube", "k8s.io/kubernetes"

    def __init__(self, files_repo, pinned):
        super().__init__(files_repo, pinned)
        self.module_dir = REPO / "upstream" / "kubernetes"
        self.dir = files_repo / "dl.k8s.io/release" / ("v" + self.version) / "bin/linux" / ARCH

    def files(self):
        return [self.dir / name for name in KUBE_COMMANDS] + [self.dir / (name + ".sha256") for name in KUBE_COMMANDS]

    def build(self, work):
        major, minor = self.version.split(".")[:2]
        ldflags = ["-s", "-w"]
        for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
            ldflags += ["-X %s.gitVersion=v%s" % (pkg, self.version), "-X %s.gitMajor=%s" % (pkg, major),
                        "-X %s.gitMinor=%s" % (pkg, minor), "-X %s.gitTreeState=clean" % pkg]
        go_build(self.module_dir, ["k8s.io/kubernetes/cmd/%s" % name for name in KUBE_COMMANDS], work,
                 " ".join(ldflags))
        self.dir.mkdir(parents=True, exist_ok=True)
        for name in KUBE_COMMANDS:  # dl.k8s.io publishes <file>.sha256 holding the bare digest
            shutil.copy2(work / name, self.dir / name)
            (self.dir / (name + ".sha256")).write_text(sha256(self.dir / name) + "\n")


class Etcd(Component):
    name, module = "etcd", "go.etcd.io/etcd/server/v3"

    def release(self) -> Path:
        return self.files_repo / "github.com/etcd-io/etcd/releases/download" / ("v" + self.version)

    def files(self):
        return [self.release() / ("etcd-v%s-linux-%s.tar.gz" % (self.version, ARCH)), self.release() / "SHA256SUMS"]

    def build(self, work):
        go_build(self.module_dir, ["go.etcd.io/etcd/server/v3"], work / "server", "-s -w")
        go_build(self.module_dir, ["go.etcd.io/etcd/etcdctl/v3"], work / "etcdctl", "-s -w")
        top = "etcd-v%s-linux-%s" % (self.version, ARCH)
        tarball, sums = self.files()
        tarball.parent.mkdir(parents=True, exist_ok=True)
        _tar(tarball, [(top + "/etcd", work / "server/server"), (top + "/etcdctl", work / "etcdctl/etcdctl")])
        sums.write_text("%s  %s\n" % (sha256(tarball), tarball.name))  # etcd's SHA256SUMS format


class Containerd(Component):
    name, module = "containerd", "github.com/containerd/containerd/v2"

    def files(self):
        tarball = (self.files_repo / "github.com/containerd/containerd/releases/download" / ("v" + self.version)
                   / ("containerd-%s-linux-%s.tar.gz" % (self.version, ARCH)))
        return [tarball, Path(str(tarball) + ".sha256sum")]

    def build(self, work):
        ldflags = "-s -w -X github.com/containerd/containerd/v2/version.Version=v%s" % self.version
        commands = ["containerd", "containerd-shim-runc-v2", "ctr"]
        go_build(self.module_dir, ["github.com/containerd/containerd/v2/cmd/%s" % c for c in commands], work,
                 ldflags, tags="no_btrfs no_devmapper no_zfs")
        tarball, sums = self.files()
        tarball.parent.mkdir(parents=True, exist_ok=True)
        _tar(tarball, [("bin/" + c, work / c) for c in commands])
        sums.write_text("%s  %s\n" % (sha256(tarball), tarball.name))


class Runc(Component):
    name, module = "runc", "github.com/opencontainers/runc"

    def files(self):
        release = self.files_repo / "github.com/opencontainers/runc/releases/download" / ("v" + self.version)
        return [release / ("runc." + ARCH), release / "runc.sha256sum"]

    def build(self, work):
        # seccomp needs cgo and libseccomp (Debian's libseccomp-dev here, libseccomp2 on nodes).
        go_build(self.module_dir, ["github.com/opencontainers/runc"], work,
                 "-s -w -X main.version=%s" % self.version, cgo=True, tags="seccomp")
        binary, sums = self.files()
        binary.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(work / "runc", binary)
        sums.write_text("%s  %s\n" % (sha256(binary), binary.name))


COMPONENTS = {"kubernetes": Kubernetes, "etcd": Etcd, "containerd": Containerd, "runc": Runc}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files-repo", default=DEFAULT_FILES_REPO, type=Path)
    parser.add_argument("components", nargs="*", metavar="component", help=", ".join(COMPONENTS) + " (default: all)")
    args = parser.parse_args(argv)
    unknown = [name for name in args.components if name not in COMPONENTS]
    if unknown:
        parser.error("unknown component %s (known: %s)" % (", ".join(unknown), ", ".join(COMPONENTS)))
    pinned = versions()
    times_file = args.files_repo / "build-times.json"
    for name in args.components or list(COMPONENTS):
        component = COMPONENTS[name](args.files_repo, pinned)
        component.check_pin()
        if component.up_to_date():
            print("upstream: %s %s is up to date" % (name, component.version))
            continue
        print("upstream: building %s %s (go %s) ..." % (name, component.version, go_version()), flush=True)
        began = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="apiary-upstream-") as work:
            component.build(Path(work))
        seconds = round(time.monotonic() - began)
        component.stamp().parent.mkdir(parents=True, exist_ok=True)
        component.stamp().write_text(component.recipe())
        record = json.loads(times_file.read_text()) if times_file.exists() else []
        record.append({"component": name, "version": component.version, "seconds": seconds,
                       "go": go_version(), "cpus": os.cpu_count(), "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
        times_file.write_text(json.dumps(record, indent=1) + "\n")
        print("upstream: %s %s built in %d s" % (name, component.version, seconds), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
