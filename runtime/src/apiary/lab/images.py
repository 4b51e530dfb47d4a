"""Container images in the lab: each image the seed uses maps to real programs from Debian.

| image                | program                                   | PATH in the container              |
|----------------------|-------------------------------------------|------------------------------------|
| `nginx*`             | nginx-light serving Debian's welcome page | the host's                         |
| `busybox*`           | busybox-static (`/bin/busybox`)           | a per-pod dir of applet symlinks   |
| `nicolaka/netshoot*` | the host's tools (curl, ping, ip, ...)    | the host's                         |

`command`/`args` work as in Kubernetes: `command` replaces the image's entrypoint, `args` its
default arguments. The registry (`docker.io/`, `library/`) is ignored when matching.
"""
from __future__ import annotations

import fnmatch
import os
import shutil
import subprocess

HOST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
BUSYBOX = "/bin/busybox"
NGINX = "/usr/sbin/nginx"
NGINX_ROOT = "/usr/share/nginx/html"

# (pattern, image kind): the first match wins.
_PATTERNS = [("nginx*", "nginx"), ("busybox*", "busybox"), ("nicolaka/netshoot*", "netshoot")]
KNOWN = ", ".join(p for p, _ in _PATTERNS)

# The image's ENTRYPOINT and CMD, as Docker Hub's images have them (nginx's entrypoint script
# ends by exec'ing its arguments, so it is left out).
_DEFAULTS = {
    "nginx": ([], None),  # None: the lab's nginx command line (see argv())
    "busybox": ([], ["sh"]),
    "netshoot": ([], ["zsh" if shutil.which("zsh") else "bash"]),
}


def _repository(image: str) -> str:
    ref = image.split("@", 1)[0]
    last = ref.rsplit("/", 1)
    if ":" in last[-1]:
        ref = ref[: ref.rindex(":")]
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        if ref.startswith(prefix):
            ref = ref[len(prefix):]
    if ref.startswith("library/"):
        ref = ref[len("library/"):]
    return ref


def image_kind(image: str) -> str | None:
    """'nginx', 'busybox', 'netshoot' or None for an image the lab cannot run."""
    if not isinstance(image, str) or not image:
        return None
    repo = _repository(image)
    for pattern, kind in _PATTERNS:
        if fnmatch.fnmatchcase(repo, pattern):
            return kind
    return None


def container_dir(pod_dir: str, container: dict) -> str:
    return os.path.join(pod_dir, "containers", container["name"])


def path_for(image: str, pod_dir: str) -> str:
    """The PATH processes of this image see (also for `apiary lab exec`)."""
    if image_kind(image) == "busybox":
        return os.path.join(pod_dir, "busybox", "bin")
    return HOST_PATH


def prepare(container: dict, pod_dir: str) -> None:
    """Files the image needs in the pod dir (nginx's config and temp dirs, busybox's applets)."""
    kind = image_kind(container["image"])
    cdir = container_dir(pod_dir, container)
    os.makedirs(cdir, exist_ok=True)
    if kind == "busybox":
        bindir = os.path.join(pod_dir, "busybox", "bin")
        if not os.path.isdir(bindir):
            os.makedirs(bindir)
            subprocess.run([BUSYBOX, "--install", "-s", bindir], check=True, capture_output=True)
    elif kind == "nginx":
        for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
            os.makedirs(os.path.join(cdir, "temp", sub), exist_ok=True)
        with open(os.path.join(cdir, "nginx.conf"), "w") as handle:
            handle.write(nginx_conf(container, cdir))


def nginx_conf(container: dict, cdir: str) -> str:
    ports = sorted({p["containerPort"] for p in container.get("ports") or [] if p.get("protocol", "TCP") == "TCP"})
    listens = "".join("        listen %d;\n" % port for port in ports or [80])
    temp = os.path.join(cdir, "temp")
    return (
        "# written by apiary lab for container %(name)s (image %(image)s)\n"
        "worker_processes 1;\n"
        "pid %(cdir)s/nginx.pid;\n"
        "error_log stderr;\n"
        "events { worker_connections 256; }\n"
        "http {\n"
        "    include /etc/nginx/mime.types;\n"
        "    default_type application/octet-stream;\n"
        "    access_log /dev/stdout;\n"
        "    client_body_temp_path %(temp)s/client_body;\n"
        "    proxy_temp_path %(temp)s/proxy;\n"
        "    fastcgi_temp_path %(temp)s/fastcgi;\n"
        "    uwsgi_temp_path %(temp)s/uwsgi;\n"
        "    scgi_temp_path %(temp)s/scgi;\n"
        "    server {\n"
        "%(listens)s"
        "        root %(root)s;\n"
        "        index index.html index.nginx-debian.html;\n"
        "        location / { try_files $uri $uri/ =404; }\n"
        "    }\n"
        "}\n" % {"name": container["name"], "image": container["image"], "cdir": cdir, "temp": temp,
                 "listens": listens, "root": NGINX_ROOT})


def argv(container: dict, pod_dir: str) -> list:
    """The process to run, from the image's defaults and the container's command/args."""
    kind = image_kind(container["image"])
    entrypoint, cmd = _DEFAULTS[kind]
    if kind == "nginx" and cmd is None:
        conf = os.path.join(container_dir(pod_dir, container), "nginx.conf")
        cmd = [NGINX, "-c", conf, "-e", "stderr", "-g", "daemon off;"]
    if container.get("command"):
        return list(container["command"]) + list(container.get("args") or [])
    if container.get("args"):
        return list(entrypoint) + list(container["args"])
    return list(entrypoint) + list(cmd)


def environment(container: dict, pod: dict, pod_dir: str) -> dict:
    env = {
        "PATH": path_for(container["image"], pod_dir),
        "HOSTNAME": hostname(pod),
        "HOME": "/root",
    }
    for var in container.get("env") or []:
        env[var["name"]] = var.get("value") or ""
    return env


def hostname(pod: dict) -> str:
    """The pod's hostname: its name, cut to 63 characters as the kubelet does."""
    return pod["metadata"]["name"][:63].rstrip("-.")
