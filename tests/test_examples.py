import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.slow
def test_lightning_dropin_example_runs_and_logs(tmp_path):
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / "lightning_dropin.py"), "--epochs", "1", "--backbone", "mobilenetv3_small_050",
         "--input-size", "16", "--root", str(tmp_path)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "after experience 4: avg_acc=" in result.stdout
    # Lightning's default logger (TensorBoard here) got the run; the matrix artefact sits beside it.
    assert list(tmp_path.rglob("events.out.tfevents.*"))
    artefacts = list(tmp_path.rglob("accuracy_matrix.json"))
    assert artefacts and '"forgetting"' in artefacts[0].read_text()
