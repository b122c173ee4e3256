"""Data parallelism on 8 emulated CPU devices equals the single-device run.

XLA fixes the device count when JAX starts, so the check runs in a fresh process.
"""

import os
import pathlib
import subprocess
import sys


def test_sharded_training_equals_single_device():
  root = pathlib.Path(__file__).resolve().parents[1]
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
  done = subprocess.run([sys.executable, "-m", "tests.data_parallel_check"], cwd=root,
                        env=env, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stdout + done.stderr
  assert "data parallel ok" in done.stdout
