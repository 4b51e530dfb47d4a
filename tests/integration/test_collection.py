"""The collection builds with ansible-galaxy, installs, and its plugins resolve from the install."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VENV = os.path.join(ROOT, ".venv", "bin")


def test_collection_builds_and_installs(tmp_path):
    build = subprocess.run([os.path.join(VENV, "ansible-galaxy"), "collection", "build", ROOT,
                            "--output-path", str(tmp_path)], capture_output=True, text=True, cwd=str(tmp_path))
    assert build.returncode == 0, build.stderr
    tarball = tmp_path / "apiary-cluster-0.1.0.tar.gz"
    assert tarball.exists()
    install_dir = tmp_path / "installed"
    install = subprocess.run([os.path.join(VENV, "ansible-galaxy"), "collection", "install", str(tarball),
                              "-p", str(install_dir), "--no-deps"], capture_output=True, text=True,
                             cwd=str(tmp_path))  # away from the repo's ansible.cfg (collections/ links to the repo)
    assert install.returncode == 0, install.stderr
    root = install_dir / "ansible_collections" / "apiary" / "cluster"
    for path in ("roles/preflight/tasks/main.yml", "plugins/connection/netns.py",
                 "plugins/modules/bpf_probe.py", "playbooks/cluster.yml", "Makefile", "bpf", "runtime/pyproject.toml"):
        assert (root / path).exists(), path
    assert not (root / ".venv").exists() and not (root / "collections").exists()
    # The installed copy's modules document themselves (the docs parse).
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(install_dir))
    for plugin, kind in (("apiary.cluster.bpf_probe", "module"), ("apiary.cluster.netns", "connection"),
                         ("apiary.cluster.validate_inventory", "module")):
        doc = subprocess.run([os.path.join(VENV, "ansible-doc"), "-t", kind, plugin],
                             capture_output=True, text=True, env=env, cwd=str(tmp_path))
        assert doc.returncode == 0, doc.stderr
