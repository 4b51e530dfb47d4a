"""Upstream binaries built for the lab (kube-apiserver, kubectl, etcd, ...), found for tests.

    binary("kube-apiserver")   # -> a path, or RuntimeError telling to run `make upstream`

They are looked up in the files_repo cache that scripts/build-upstream.py fills, laid out like the
download sites (dl.k8s.io/release/v<kube_version>/bin/linux/amd64/<name>; etcd as GitHub's release
tarball, extracted once under /var/cache/apiary/bin). The versions are the collection's
(roles/apiary_defaults/defaults/main/download.yml). scripts/bootstrap.sh builds them (make upstream).
"""
from __future__ import annotations

import fcntl
import os
import shutil
import tarfile

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOWNLOAD_DEFAULTS = os.path.join(ROOT, "roles", "apiary_defaults", "defaults", "main", "download.yml")
FILES_REPO = "/var/cache/apiary/files"
BIN_CACHE = "/var/cache/apiary/bin"
KUBERNETES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kube-proxy", "kubelet", "kubectl")
ETCD = ("etcd", "etcdctl", "etcdutl")


def versions() -> dict:
    with open(DOWNLOAD_DEFAULTS) as f:
        defaults = yaml.safe_load(f)
    return {"kubernetes": str(defaults["kube_version"]), "etcd": str(defaults["etcd_version"])}


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _from_tarball(tarball: str, member: str, into: str) -> str | None:
    """`member` of `tarball`, extracted (once, under a lock) into `into`."""
    target = os.path.join(into, os.path.basename(member))
    if _executable(target):
        return target
    if not os.path.isfile(tarball):
        return None
    os.makedirs(into, exist_ok=True)
    with open(os.path.join(into, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel test runs extract it only once
        if not _executable(target):
            with tarfile.open(tarball) as tar:
                source = tar.extractfile(member)
                if source is None:
                    return None
                partial = target + ".part"
                with source, open(partial, "wb") as out:
                    shutil.copyfileobj(source, out)
                os.chmod(partial, 0o755)
                os.replace(partial, target)
    return target


def binary(name: str) -> str:
    """The path of upstream binary `name` at the collection's version; RuntimeError when not built."""
    v = versions()
    looked = []
    if name in KUBERNETES:
        path = os.path.join(FILES_REPO, "dl.k8s.io", "release", "v" + v["kubernetes"], "bin", "linux", "amd64", name)
        looked.append(path)
        if _executable(path):
            return path
    elif name in ETCD:
        release = "etcd-v%s-linux-amd64" % v["etcd"]
        tarball = os.path.join(FILES_REPO, "github.com", "etcd-io", "etcd", "releases", "download",
                               "v" + v["etcd"], release + ".tar.gz")
        looked.append(tarball)
        path = _from_tarball(tarball, "%s/%s" % (release, name), os.path.join(BIN_CACHE, release))
        if path:
            return path
    else:
        raise ValueError("not an upstream binary: %s" % name)
    raise RuntimeError("%s is not built (looked at %s): run make upstream" % (name, ", ".join(looked)))


def available(name: str) -> bool:
    try:
        binary(name)
        return True
    except RuntimeError:
        return False
