"""The optimizer is the installable library part: a wheel of the project holds `sophia.py` at the top
level, so `pip install` gives `from sophia import SophiaG`."""

import os
import subprocess
import sys
import zipfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_wheel_installs_the_sophia_module(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(tmp_path), REPO],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("sophia_repro-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "sophia.py" in names
    assert not any(n.startswith(("train", "model", "tests/")) for n in names)  # scripts run from a clone
    target = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(target)
    code = "import sophia, torch; opt = sophia.SophiaG([torch.nn.Parameter(torch.ones(2))]); print(sophia.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(target)),
                         check=True, capture_output=True, text=True).stdout
    assert out.strip() == str(target / "sophia.py")
