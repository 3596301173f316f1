"""Settings from the environment are read where they are used: a bad value never breaks an import, and
the error names the variable and what it may hold."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from tl_core.errors import ConfigError

BAD = {"TL_WORKER_NICE": "ten", "TL_ACTIVATION_CACHE_MB": "lots", "TL_CHECKPOINT_MIRROR_SECONDS": "-1"}


def test_a_bad_value_does_not_break_any_import():
    code = "import tl_core.jobs, tl_core.finetune, tl_core.runner, tl_core.__main__; print('ok')"
    env = {**__import__("os").environ, **BAD}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_where_it_is_used_the_error_names_the_variable(monkeypatch, tmp_path):
    from tl_core import finetune, jobs

    monkeypatch.setenv("TL_WORKER_NICE", "ten")
    with pytest.raises(ConfigError, match="TL_WORKER_NICE is 'ten'; it must be a number of 0 or more"):
        jobs.lower_priority()
    monkeypatch.setenv("TL_ACTIVATION_CACHE_MB", "lots")
    with pytest.raises(ConfigError, match="TL_ACTIVATION_CACHE_MB is 'lots'"):
        finetune._no_room_for_cache(tmp_path, 1)
    monkeypatch.setenv("TL_ACTIVATION_CACHE_MB", "1")
    assert "(limit TL_ACTIVATION_CACHE_MB=1)" in finetune._no_room_for_cache(tmp_path, 2 * 1024**2)
