import json
import os
import subprocess
import sys

import pytest

BLOCK_SOCKETS = '''
import socket

class _Blocked(OSError):
    pass

def _refuse(*args, **kwargs):
    raise _Blocked("network access attempted during an offline test")

socket.socket.connect = _refuse
socket.socket.connect_ex = _refuse
socket.create_connection = _refuse
socket.getaddrinfo = _refuse
'''


@pytest.mark.slow
def test_default_job_runs_with_sockets_blocked(tmp_path):
    """No download at run time: the main job works with every network call failing."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(BLOCK_SOCKETS)
    env = {**os.environ, "PYTHONPATH": f"{site}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "CVM_CACHE_DIR": str(tmp_path / "cache")}  # a cold cache: the text model must load from disk too
    out = tmp_path / "run"
    result = subprocess.run(
        [sys.executable, "-m", "cvm_lightning", "run", "--strategies", "cvm,replay", "--epochs", "1",
         "--train-per-class", "20", "--backbone", "mobilenetv3_small_050", "--input-size", "16", "--no-progress",
         "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "network access attempted" not in result.stderr
    results = json.loads((out / "results.json").read_text())
    assert set(results["strategies"]) == {"cvm", "replay"}
    check = subprocess.run([sys.executable, "-c", "import socket; socket.create_connection(('127.0.0.1', 9))"],
                           env=env, capture_output=True, text=True)
    assert "network access attempted" in check.stderr, "the block itself works"
