"""The lab's pod images, built from the Debian packages installed on this machine.

No registry is reachable from the lab, so the images its pods name (nginx, busybox, nicolaka/netshoot, the
sandbox's pause) are made here: an image is a list of Debian packages (their files and those of their
`Depends` closure, less documentation and init-system files), extra host files (anything else: a binary we
built, a file a package's postinst would have made), generated files, and the OCI config (entrypoint, cmd,
env, ports). Shared libraries the files need are added by asking the dynamic loader (ldd), so a binary that
is not from a package works too. Each image is one gzip layer.

    python -m lab.images --out build/images       (make lab-images)

All images go into ONE OCI image layout (`build/images/`: oci-layout, index.json, blobs/sha256/...): the
registry (lab/registry.py) serves one directory and one index that names every image
(annotation `io.containerd.image.name`, the name as containerd sees it), and the world namespace gets one
folder to mount. Images that share a blob store it once.

Builds are deterministic: entries sorted, owner 0:0, a fixed mtime, gzip without name or time, JSON with
sorted keys. The same installed packages give the same digests, and a second build changes no file
(blobs are written only when new; blobs no image uses any more are removed).
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile

# 2025-01-01T00:00:00Z: every file's mtime and the images' "created".
MTIME = 1735689600
CREATED = "2025-01-01T00:00:00Z"
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"

# Dependencies that only serve the package system or an init system inside a container.
EXCLUDED_PACKAGES = frozenset({
    "adduser", "debconf", "debconf-2.0", "dpkg", "init-system-helpers", "install-info", "libcap2-bin",
    "login", "lsb-base", "passwd", "perl-base", "sysvinit-utils", "ucf",
})
# Files of the packages that a container never reads (canonical paths, after /lib -> /usr/lib etc.).
EXCLUDED_PATHS = (
    "/usr/share/doc", "/usr/share/man", "/usr/share/info", "/usr/share/lintian", "/usr/share/locale",
    "/usr/share/bug", "/usr/share/bash-completion", "/usr/share/zsh", "/usr/share/apport",
    "/usr/share/menu", "/usr/share/pixmaps", "/usr/share/applications", "/usr/share/debconf",
    "/etc/init.d", "/etc/systemd", "/usr/lib/systemd", "/etc/logrotate.d", "/etc/apparmor.d",
    "/etc/cron.daily", "/etc/ufw", "/usr/share/ufw",
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- what an image is --------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class File:
    data: bytes
    mode: int = 0o644


@dataclasses.dataclass(frozen=True)
class Symlink:
    target: str


@dataclasses.dataclass(frozen=True)
class Dir:
    mode: int = 0o755


@dataclasses.dataclass(frozen=True)
class Image:
    """One image. `host_files`: host paths copied at the same path, or (host path, image path) pairs;
    symlink chains are followed and ELF files get their shared libraries. `files`: (image path,
    File|Symlink|Dir) made here, applied last (they win). `users`: extra /etc/passwd lines."""
    name: str                       # as containerd normalizes it: docker.io/library/nginx:latest
    packages: tuple = ()
    host_files: tuple = ()
    files: tuple = ()
    entrypoint: tuple = ()
    cmd: tuple = ()
    env: tuple = ("PATH=" + PATH,)
    ports: tuple = ()               # "80/tcp"
    workdir: str = ""
    user: str = ""
    stop_signal: str = ""
    users: tuple = ()
    groups: tuple = ()


def base_files(image: Image) -> tuple:
    """What every image has: users and groups, name resolution through files then DNS (the kubelet mounts
    /etc/resolv.conf and /etc/hosts; the /etc/hosts here is for running outside Kubernetes), /tmp."""
    passwd = [
        "root:x:0:0:root:/root:/bin/sh", "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
        "bin:x:2:2:bin:/bin:/usr/sbin/nologin", "sys:x:3:3:sys:/dev:/usr/sbin/nologin",
        "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin",
        "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin", *image.users,
    ]
    group = [
        "root:x:0:", "daemon:x:1:", "bin:x:2:", "sys:x:3:", "adm:x:4:", "tty:x:5:", "www-data:x:33:",
        "nogroup:x:65534:", *image.groups,
    ]
    nsswitch = ("passwd: files\ngroup: files\nshadow: files\nhosts: files dns\nnetworks: files\n"
                "protocols: files\nservices: files\nethers: files\nrpc: files\n")
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    return (
        ("/etc/passwd", File(("\n".join(passwd) + "\n").encode())),
        ("/etc/group", File(("\n".join(group) + "\n").encode())),
        ("/etc/nsswitch.conf", File(nsswitch.encode())),
        ("/etc/hosts", File(hosts.encode())),
        ("/tmp", Dir(0o1777)), ("/var/tmp", Dir(0o1777)), ("/root", Dir(0o700)), ("/run", Dir()),
        ("/proc", Dir()), ("/sys", Dir()), ("/dev", Dir()),
    )


# --- the lab's images ----------------------------------------------------------------------------------
NGINX = ("nginx-light", "netbase")
BUSYBOX = ("busybox-static",)
# What netshoot's users reach for, and a shell's basics (bash, sh, ls, grep, ps, a terminfo).
NETSHOOT = ("bash", "dash", "coreutils", "grep", "sed", "mawk", "procps", "ncurses-base", "netbase",
            "ca-certificates", "curl", "iputils-ping", "iproute2", "bind9-dnsutils", "netcat-openbsd", "socat",
            "tcpdump", "iperf3", "python3")


def lab_images(workdir: str) -> list[Image]:
    """The images the lab serves. `workdir` holds what is compiled for them (the pause binary)."""
    ensure_installed(["gcc", "libc6-dev", *NGINX, *BUSYBOX, *NETSHOOT])
    pause = compile_pause(workdir)
    busybox = "/bin/busybox"  # busybox-static's
    return [
        Image(
            name="registry.k8s.io/pause:3.10.1",
            host_files=((pause, "/pause"),),
            entrypoint=("/pause",), user="65535:65535",
        ),
        Image(
            name="docker.io/library/nginx:latest",
            packages=NGINX,
            # nginx's postinst copies the welcome page; the official image logs to the container's output.
            host_files=("/etc/os-release",
                        ("/usr/share/nginx/html/index.html", "/var/www/html/index.nginx-debian.html")),
            files=(
                ("/etc/nginx/sites-enabled/default", File(NGINX_SITE.encode())),
                ("/var/log/nginx", Dir()), ("/var/lib/nginx", Dir()),
                ("/var/log/nginx/access.log", Symlink("/dev/stdout")),
                ("/var/log/nginx/error.log", Symlink("/dev/stderr")),
            ),
            cmd=("nginx", "-g", "daemon off;"), ports=("80/tcp",), stop_signal="SIGQUIT",
        ),
        Image(
            name="docker.io/library/busybox:latest",
            packages=BUSYBOX,
            files=busybox_links(busybox),
            cmd=("sh",),
        ),
        Image(
            name="docker.io/nicolaka/netshoot:latest",
            packages=NETSHOOT,
            # Links a postinst makes: update-alternatives (nc, awk), update-ca-certificates (the bundle).
            host_files=("/etc/os-release", "/usr/bin/nc", "/usr/bin/awk", "/etc/ssl/certs/ca-certificates.crt"),
            users=("tcpdump:x:104:108::/nonexistent:/usr/sbin/nologin",),
            groups=("tcpdump:x:108:",),
            cmd=("bash",), workdir="/root",
        ),
    ]


# Debian's default site without its `listen [::]:80`: nginx must start in a pod without IPv6 too.
NGINX_SITE = """server {
\tlisten 80 default_server;
\troot /var/www/html;
\tindex index.html index.htm index.nginx-debian.html;
\tserver_name _;
\tlocation / {
\t\ttry_files $uri $uri/ =404;
\t}
}
"""


def compile_pause(workdir: str) -> str:
    """lab/pause.c -> a static, stripped binary. Compiled from a copy named pause.c in `workdir`, so the
    output does not depend on where the tree is."""
    src = os.path.join(workdir, "pause.c")
    out = os.path.join(workdir, "pause")
    shutil.copyfile(os.path.join(ROOT, "lab", "pause.c"), src)
    subprocess.run(["gcc", "-static", "-Os", "-s", "-Wall", "-Werror", "-o", out, "pause.c"],
                   cwd=workdir, check=True)
    return out


def busybox_links(binary: str) -> tuple:
    """A link to busybox for each applet it has (sh, wget, ping, nslookup, ...), where busybox puts them."""
    out = subprocess.run([binary, "--list-full"], capture_output=True, text=True, check=True).stdout
    real = os.path.realpath(binary)
    # Not busybox itself (listed as usr/bin/busybox, which is where /bin/busybox is), nor initrd's linuxrc.
    return tuple(("/" + path, Symlink(binary)) for path in sorted(out.split())
                 if path != "linuxrc" and os.path.realpath("/" + path) != real)


# --- collecting a root filesystem ----------------------------------------------------------------------
class Rootfs:
    """The entries of an image's root filesystem, by path: Dir, Symlink, File, or a host file (str)."""

    def __init__(self):
        self.entries: dict[str, object] = {"/": Dir()}
        self._elves: list[str] = []

    def add_host(self, path: str, dest: str | None = None, required: bool = True):
        """A host path at `dest` (default: the same path). A symlink is copied as a link and its target
        added too (a dangling link stays dangling); a symlinked directory on the way (e.g. /lib -> usr/lib)
        likewise."""
        path = os.path.normpath(path)
        if dest is not None and dest != path:
            if os.path.isdir(path) and not os.path.islink(path):
                self.put(dest, Dir(_mode(path)))
            else:
                real = os.path.realpath(path)
                self.put(dest, real)
                self._elves.append(real)
            return
        where = os.path.join(self.resolve_dir(os.path.dirname(path)), os.path.basename(path))
        if where in self.entries and not isinstance(self.entries[where], Dir):
            return
        if os.path.islink(where):
            target = os.readlink(where)
            self.entries[where] = Symlink(target)
            self.add_host(os.path.join(os.path.dirname(where), target), required=False)
        elif os.path.isdir(where):
            self.entries[where] = Dir(_mode(where))
        elif os.path.isfile(where):
            self.entries[where] = where
            self._elves.append(where)
        elif required:
            raise FileNotFoundError("%s: no such file on this machine" % path)

    def put(self, path: str, entry):
        """An entry at an image path, through the same symlinked directories the host has."""
        path = os.path.normpath(path)
        self.entries[os.path.join(self.resolve_dir(os.path.dirname(path)), os.path.basename(path))] = entry

    def resolve_dir(self, path: str) -> str:
        """The canonical form of directory `path`, adding its components (dirs, or symlinks as the host has
        them) as entries."""
        current = "/"
        for part in [p for p in path.split("/") if p]:
            step = os.path.join(current, part)
            if os.path.islink(step):
                self.entries[step] = Symlink(os.readlink(step))
                current = self.resolve_dir(os.path.realpath(step))
            else:
                if not isinstance(self.entries.get(step), Dir):
                    self.entries[step] = Dir(_mode(step) if os.path.isdir(step) else 0o755)
                current = step
        return current

    def add_libraries(self, cache: dict):
        """The shared libraries every ELF file here needs, as the dynamic loader finds them."""
        while self._elves:
            path = self._elves.pop()
            for lib in _needed_libraries(path, cache):
                self.add_host(lib)


def _mode(path: str) -> int:
    return os.lstat(path).st_mode & 0o7777


def _needed_libraries(path: str, cache: dict) -> list[str]:
    if path not in cache:
        with open(path, "rb") as f:
            is_elf = f.read(4) == b"\x7fELF"
        cache[path] = _ldd(path) if is_elf else []
    return cache[path]


def _ldd(path: str) -> list[str]:
    proc = subprocess.run(["ldd", path], capture_output=True, text=True, env={"LC_ALL": "C", "PATH": PATH})
    text = proc.stdout + proc.stderr
    if "not a dynamic executable" in text or "statically linked" in text:
        return []
    if proc.returncode != 0:
        raise RuntimeError("ldd %s: %s" % (path, text.strip()))
    libs = []
    for line in proc.stdout.splitlines():
        if "=> not found" in line:
            raise RuntimeError("%s needs %s, which the dynamic loader does not find" % (path, line.split()[0]))
        words = line.replace("=>", " ").split()
        libs.extend(w for w in words if w.startswith("/"))
    return libs


# --- Debian packages -------------------------------------------------------------------------------------
def installed_packages() -> dict[str, dict]:
    """Installed packages of this machine's architecture (and `all`): name -> depends, provides, key for
    dpkg -L."""
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True,
                          check=True).stdout.strip()
    fmt = ("${Package}\t${binary:Package}\t${Architecture}\t${db:Status-Abbrev}\t${Pre-Depends}, ${Depends}\t"
           "${Provides}\n")
    out = subprocess.run(["dpkg-query", "-W", "-f", fmt], capture_output=True, text=True, check=True).stdout
    packages = {}
    for line in out.splitlines():
        name, key, pkg_arch, status, depends, provides = line.split("\t")
        if status.startswith("ii") and pkg_arch in (arch, "all"):
            packages[name] = {"key": key, "depends": depends, "provides": _names(provides)}
    return packages


def _names(field: str) -> list[list[str]]:
    """A Depends-like field as groups of alternative names, without versions and arch qualifiers."""
    groups = []
    for group in field.split(","):
        alts = [alt.split()[0].split(":")[0] for alt in group.split("|") if alt.strip()]
        if alts:
            groups.append(alts)
    return groups


def ensure_installed(packages: list[str]):
    """apt-get install what is missing (the build runs as root on the controller, Debian 12)."""
    have = installed_packages()
    missing = sorted(p for p in set(packages) if p not in have)
    if missing:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "-o", "DPkg::Lock::Timeout=600",
                        *missing], check=True, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))


def package_closure(roots, installed: dict) -> list[str]:
    """`roots` and, recursively, what they depend on (the first installed alternative of each group),
    less EXCLUDED_PACKAGES."""
    provider = {}
    for name, info in sorted(installed.items()):
        for (virtual, *_rest) in info["provides"]:
            provider.setdefault(virtual, name)
    seen, stack = set(), list(roots)
    while stack:
        name = stack.pop()
        if name in seen or name in EXCLUDED_PACKAGES:
            continue
        if name not in installed:
            raise RuntimeError("package %s is not installed" % name)
        seen.add(name)
        for alts in _names(installed[name]["depends"]):
            if any(a in EXCLUDED_PACKAGES for a in alts):
                continue
            for alt in alts:
                pick = alt if alt in installed else provider.get(alt)
                if pick:
                    stack.append(pick)
                    break
    return sorted(seen)


def package_files(packages: list[str], installed: dict) -> list[str]:
    if not packages:
        return []
    keys = [installed[p]["key"] for p in packages]
    out = subprocess.run(["dpkg-query", "-L", *keys], capture_output=True, text=True, check=True).stdout
    return sorted({line for line in out.splitlines() if line.startswith("/") and line != "/."})


def _excluded(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in EXCLUDED_PATHS)


def collect(image: Image, installed: dict, ldd_cache: dict) -> Rootfs:
    root = Rootfs()
    for path in package_files(package_closure(image.packages, installed), installed):
        canonical = os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))
        if _excluded(canonical) or not os.path.lexists(path):
            continue  # documentation, init files; or a file the admin removed (e.g. dpkg path-exclude)
        root.add_host(path)
    for item in image.host_files:
        src, dest = (item, None) if isinstance(item, str) else item
        root.add_host(src, dest)
    root.add_libraries(ldd_cache)
    for path, entry in base_files(image) + image.files:
        root.put(path, entry)
    return root


# --- writing OCI -------------------------------------------------------------------------------------------
class _Hashing:
    """A write-only file that hashes and counts what goes through it."""

    def __init__(self, out):
        self.out, self.sha, self.size = out, hashlib.sha256(), 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        return self.out.write(data)


def _tarinfo(path: str, entry) -> tarfile.TarInfo:
    info = tarfile.TarInfo(path.lstrip("/"))
    info.mtime, info.uid, info.gid, info.uname, info.gname = MTIME, 0, 0, "", ""
    if isinstance(entry, Dir):
        info.type, info.mode = tarfile.DIRTYPE, entry.mode
    elif isinstance(entry, Symlink):
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.target, 0o777
    elif isinstance(entry, File):
        info.size, info.mode = len(entry.data), entry.mode
    else:
        info.size, info.mode = os.path.getsize(entry), _mode(entry)
    return info


def write_layer(root: Rootfs, blobs: str) -> tuple[dict, str]:
    """The root filesystem as one tar.gz blob -> (its descriptor, the uncompressed tar's digest)."""
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".layer-")
    try:
        with os.fdopen(fd, "wb") as raw:
            packed = _Hashing(raw)
            # No file name and mtime 0 in the gzip header; a fixed level: the same tar gives the same bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=packed, mtime=0, compresslevel=6) as gz:
                plain = _Hashing(gz)
                with tarfile.open(fileobj=plain, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                    for path in sorted(p for p in root.entries if p != "/"):
                        entry = root.entries[path]
                        info = _tarinfo(path, entry)
                        if isinstance(entry, File):
                            tar.addfile(info, io.BytesIO(entry.data))
                        elif isinstance(entry, str):
                            with open(entry, "rb") as f:
                                tar.addfile(info, f)
                        else:
                            tar.addfile(info)
        digest = "sha256:" + packed.sha.hexdigest()
        _store(blobs, digest, tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    desc = {"mediaType": MEDIA_LAYER, "digest": digest, "size": packed.size}
    return desc, "sha256:" + plain.sha.hexdigest()


def _store(blobs: str, digest: str, tmp: str):
    """Move a finished blob into place, unless the same blob is there already (a rebuild changes nothing)."""
    final = os.path.join(blobs, digest.split(":", 1)[1])
    if not os.path.exists(final):
        os.chmod(tmp, 0o644)
        os.rename(tmp, final)


def _write_json_blob(blobs: str, obj: dict, media_type: str) -> dict:
    data = canonical_json(obj)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    fd, tmp = tempfile.mkstemp(dir=blobs, prefix=".json-")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    try:
        _store(blobs, digest, tmp)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"mediaType": media_type, "digest": digest, "size": len(data)}


def canonical_json(obj) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def image_config(image: Image, diff_id: str) -> dict:
    config = {"Env": list(image.env)}
    for key, value in (("Entrypoint", list(image.entrypoint)), ("Cmd", list(image.cmd)),
                       ("WorkingDir", image.workdir), ("User", image.user), ("StopSignal", image.stop_signal)):
        if value:
            config[key] = value
    if image.ports:
        config["ExposedPorts"] = {port: {} for port in image.ports}
    return {
        "architecture": "amd64", "os": "linux", "created": CREATED, "config": config,
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": CREATED, "created_by": "apiary lab/images.py: packages %s"
                     % (", ".join(image.packages) or "-")}],
    }


def build(images: list[Image], out: str, log=print) -> list[dict]:
    """Write `images` into the OCI image layout `out` (created if missing). Returns index.json's entries."""
    blobs = os.path.join(out, "blobs", "sha256")
    os.makedirs(blobs, exist_ok=True)
    ensure_installed([p for image in images for p in image.packages])
    installed = installed_packages()
    ldd_cache: dict = {}
    entries = []
    for image in images:
        layer, diff_id = write_layer(collect(image, installed, ldd_cache), blobs)
        config = _write_json_blob(blobs, image_config(image, diff_id), MEDIA_CONFIG)
        manifest = _write_json_blob(blobs, {"schemaVersion": 2, "mediaType": MEDIA_MANIFEST,
                                            "config": config, "layers": [layer]}, MEDIA_MANIFEST)
        manifest["annotations"] = {NAME_ANNOTATION: image.name, REF_ANNOTATION: image.name}
        manifest["platform"] = {"architecture": "amd64", "os": "linux"}
        entries.append(manifest)
        log("%-40s %s  layer %6.1f MB" % (image.name, manifest["digest"], layer["size"] / 1e6))
    entries.sort(key=lambda m: m["annotations"][NAME_ANNOTATION])
    _write_if_changed(os.path.join(out, "oci-layout"), canonical_json({"imageLayoutVersion": "1.0.0"}))
    _write_if_changed(os.path.join(out, "index.json"),
                      canonical_json({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries}))
    _remove_unused_blobs(blobs, entries)
    return entries


def _write_if_changed(path: str, data: bytes):
    try:
        with open(path, "rb") as f:
            if f.read() == data:
                return
    except FileNotFoundError:
        pass
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.rename(path + ".tmp", path)


def _remove_unused_blobs(blobs: str, manifests: list[dict]):
    used = set()
    for desc in manifests:
        used.add(desc["digest"])
        manifest = json.loads(read_blob(os.path.dirname(os.path.dirname(blobs)), desc["digest"]))
        used.update(d["digest"] for d in [manifest["config"], *manifest["layers"]])
    for name in os.listdir(blobs):
        if "sha256:" + name not in used:
            os.unlink(os.path.join(blobs, name))


# --- reading a layout (the registry, tests, debugging) ---------------------------------------------------
def blob_path(layout: str, digest: str) -> str:
    algo, _, hexa = digest.partition(":")
    if algo != "sha256" or len(hexa) != 64 or not all(c in "0123456789abcdef" for c in hexa):
        raise ValueError("not a sha256 digest: %r" % digest)
    return os.path.join(layout, "blobs", "sha256", hexa)


def read_blob(layout: str, digest: str) -> bytes:
    with open(blob_path(layout, digest), "rb") as f:
        return f.read()


def read_index(layout: str) -> dict[str, dict]:
    """Image name -> its manifest descriptor."""
    with open(os.path.join(layout, "index.json"), "rb") as f:
        index = json.load(f)
    return {m["annotations"][NAME_ANNOTATION]: m for m in index["manifests"]}


def unpack(layout: str, name: str, dest: str) -> dict:
    """Extract image `name`'s layer into `dest` (as containerd would: numeric owners, modes kept).
    Returns the image's config."""
    manifest = json.loads(read_blob(layout, read_index(layout)[name]["digest"]))
    for layer in manifest["layers"]:
        subprocess.run(["tar", "--numeric-owner", "-xzf", blob_path(layout, layer["digest"]), "-C", dest],
                       check=True)
    return json.loads(read_blob(layout, manifest["config"]["digest"]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "build", "images"), help="OCI layout directory")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="apiary-images-") as work:
        build(lab_images(work), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
