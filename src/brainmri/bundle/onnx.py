"""ONNX Runtime helpers shared by export (the parity check) and inference (the runtime)."""

from __future__ import annotations

import os


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def session_options(threads: int):  # -> onnxruntime.SessionOptions
    """ONNX Runtime CPU options: ``threads`` intra-op threads, all graph optimisations, no spinning, denormals as zero.

    - no busy-waiting between ops: on few, shared cores the spinning threads starve the decode/preprocess
      threads and each other (measured on 2 loaded cores: batch-1 p50 18.8 ms spinning vs 16.8 ms not);
    - denormals as zero: creating a session otherwise *clears* the calling thread's flush-to-zero flags that
      ``brainmri.utils.setup_torch`` sets, and torch (Grad-CAM, MC dropout, the parity reference) then runs
      trained EfficientNets up to ~35x slower in the same process. With it both runtimes flush denormals.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.set_denormal_as_zero", "1")
    return options
