"""imbalens.runfolder: one owner of a run folder's names; its lock names the holder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from imbalens import runfolder as rf
from imbalens.runfolder import LockHeld, RunFolder, hold_lock


def test_paths_use_the_module_constants(tmp_path: Path) -> None:
    f = RunFolder(tmp_path)
    assert f.config == tmp_path / rf.CONFIG
    assert f.last == tmp_path / rf.CHECKPOINTS / rf.LAST
    assert f.predictions("test").name == "predictions_test.csv"
    assert f.notebook("alignment").name == "alignment.ipynb"
    assert f.marker("train").name == "train.stage.done"


def test_second_holder_is_refused_with_the_holders_pid(tmp_path: Path) -> None:
    code = (
        "import sys, time\n"
        "from imbalens.runfolder import hold_lock\n"
        f"with hold_lock({str(tmp_path / 'run.lock')!r}, what='grid quick'):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(60)\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld, match=rf"pid {proc.pid} .*grid quick"):
            with hold_lock(tmp_path / "run.lock"):
                pass
        # kill -9: the kernel frees the flock, the next holder takes over the stale file
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        with hold_lock(tmp_path / "run.lock", what="after kill") as p:
            assert f'"pid": {os.getpid()}' in p.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_lock_is_reentrant_across_sequential_uses(tmp_path: Path) -> None:
    for _ in range(2):
        with RunFolder(tmp_path).lock():
            time.sleep(0.01)
    assert (tmp_path / rf.LOCK).read_text() == ""
