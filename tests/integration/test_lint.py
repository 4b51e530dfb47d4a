"""ansible-lint (production profile) over the roles, playbooks and molecule scenarios."""
import os
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_ansible_lint_is_clean():
    lint = subprocess.run([os.path.join(ROOT, ".venv", "bin", "ansible-lint"), "--offline", "-q"],
                          capture_output=True, text=True, cwd=ROOT)
    assert lint.returncode == 0, lint.stdout[-6000:] + lint.stderr[-3000:]
