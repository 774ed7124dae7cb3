"""The README's code: the first Python block of "Using Sophia in your own training loop" runs as it is,
with only the installed package (from a folder outside the repository, without PYTHONPATH), and its
loss falls."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme_block(heading):
    """The first ```python block after the line `heading` in README.md."""
    text = open(os.path.join(REPO, "README.md")).read()
    after = text[text.index(f"\n{heading}\n"):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


def test_using_sophia_in_your_own_training_loop_runs_and_learns(tmp_path):
    code = readme_block("## Using Sophia in your own training loop")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env={**env, "OMP_NUM_THREADS": "1"},
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    losses = [float(x) for x in re.findall(r"loss (\d+\.\d+)", result.stdout)]
    assert len(losses) >= 3 and losses[0] > 4 and losses[-1] < losses[0] / 10, result.stdout
