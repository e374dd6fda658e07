"""The tools the deploy tests run (kubectl, promtool): a missing one fails
the test that needs it, with how to get it (make test installs both:
scripts/deploy_tools.py)."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def tool(name):
    path = shutil.which(name)
    if path is None:
        pytest.fail("{} is not installed: run `make deploy-tools` (as root it installs "
                    "it with apt-get), or see scripts/deploy_tools.py".format(name))
    return path


def run(argv, **kwargs):
    """Run a tool; its output, or a failure that shows what it said."""
    result = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, **kwargs)
    assert result.returncode == 0, "{} exited {}:\n{}{}".format(
        " ".join(str(arg) for arg in argv), result.returncode, result.stdout, result.stderr)
    return result.stdout
