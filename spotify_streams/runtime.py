"""The process settings every run of the series uses, set by one explicit call.

Importing the package sets nothing. configure_runtime() is called by the notebooks' set-up
(helpers.setup_notebook, or first thing in a notebook that imports TensorFlow), by the series
runner and by the tests; the kernels and worker processes they start inherit the variables.
"""

from __future__ import annotations

import os
import warnings

# No C++ log lines or oneDNN notice in notebook outputs, and one thread per process for
# TensorFlow, OpenMP and BLAS: the series runs fits in parallel processes instead (faster and
# identical, docs/performance.md). oneDNN is capped at AVX2, so an AVX-512 CPU sums as an AVX2
# one does (docs/reproducibility.md). PYTHONHASHSEED=0 for the kernels a run starts.
RUNTIME_ENVIRONMENT = {
    "TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0", "TF_NUM_INTRAOP_THREADS": "1",
    "TF_NUM_INTEROP_THREADS": "1", "ONEDNN_MAX_CPU_ISA": "AVX2", "OMP_NUM_THREADS": "1",
    "PYTHONHASHSEED": "0",
}


def configure_runtime(environ=os.environ) -> dict:
    """Set RUNTIME_ENVIRONMENT's variables where they are not set yet (a value set by the caller,
    e.g. an emulated CPU, wins), limit the thread pools of libraries already loaded, and silence
    one false alarm. Call it before TensorFlow is imported. Returns the variables in force."""
    for name, value in RUNTIME_ENVIRONMENT.items():
        environ.setdefault(name, value)
    if environ is os.environ:
        from threadpoolctl import threadpool_limits

        threadpool_limits(int(environ["OMP_NUM_THREADS"]))
        # loky's recycling of a worker past 300 MB, reported as "A worker stopped": a false
        # alarm (joblib#869, fixed in loky#641, not in joblib 1.6.0).
        warnings.filterwarnings("ignore", message="A worker stopped while some jobs were given",
                                category=UserWarning)
    return {name: environ[name] for name in RUNTIME_ENVIRONMENT}
