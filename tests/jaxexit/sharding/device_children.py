"""Runs a test file again as child processes with simulated CPU devices.

`XLA_FLAGS=--xla_force_host_platform_device_count=N` (and a cluster's
settings) must be set before jax is imported, so multi-device checks run
their own file as `python FILE --child ARGS...` and assert on its output.
"""

import os
import subprocess
import sys
from collections.abc import Callable

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "../../.."))


def child_env(
  devices: int, drop: Callable[[str], bool] = lambda _: False, **extra: str
) -> dict:
  """This environment without the keys `drop` names, on `devices` CPU
  devices, with `extra` added."""
  env = {k: v for k, v in os.environ.items() if not drop(k)}
  return dict(
    env,
    JAX_PLATFORMS="cpu",
    PYTHONPATH=REPO,
    XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
    **extra,
  )


def run_children(path: str, envs: list[dict], *args: str, timeout: float):
  """Runs `python path --child *args` once per env, all at once; asserts
  each exits 0 printing "CHILD OK" and returns their outputs."""
  procs = [
    subprocess.Popen(
      [sys.executable, path, "--child", *args],
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
      text=True,
    )
    for env in envs
  ]
  outputs = []
  try:
    for proc in procs:
      out, _ = proc.communicate(timeout=timeout)
      assert proc.returncode == 0 and "CHILD OK" in out, out
      outputs.append(out)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
  return outputs
