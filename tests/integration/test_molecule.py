"""The roles' molecule scenarios (lab nodes as instances, testinfra verifier)."""
import os
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.lab


@pytest.mark.parametrize("scenario", ["preflight", "node"])
def test_molecule_scenario(scenario):
    env = dict(os.environ, PATH=os.path.join(ROOT, ".venv", "bin") + os.pathsep + os.environ["PATH"],
               ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"))
    # Molecule keeps "prepared" in its state between runs; start each run from scratch.
    subprocess.run(["molecule", "reset", "-s", scenario], capture_output=True, cwd=ROOT, env=env)
    run = subprocess.run(["molecule", "test", "-s", scenario], capture_output=True, text=True, cwd=ROOT, env=env)
    assert run.returncode == 0, (run.stdout + run.stderr)[-8000:]
