"""Test-session settings shared by every test file.

`pytest -n 2` runs two worker processes on CI's two cores. Each backend would
otherwise start a thread pool as wide as the machine in every worker, and on
an oversubscribed CPU their spinning threads wait out each other's scheduler
slices: measured here, a PyTorch decode step of Gemma 3 270M took 2.3 s with
two busy processes and 2 threads each, 0.12 s with 1 thread. One intra-op
thread per worker keeps both cores busy without contention. Set before any
backend is imported (subprocesses inherit it).
"""

import os

for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(variable, "1")
os.environ.setdefault("TF_NUM_INTRAOP_THREADS", "1")
os.environ.setdefault("TF_NUM_INTEROP_THREADS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_xla_flags = os.environ.get("XLA_FLAGS", "")
if "xla_cpu_multi_thread_eigen" not in _xla_flags:
    os.environ["XLA_FLAGS"] = (_xla_flags + " --xla_cpu_multi_thread_eigen=false").strip()
