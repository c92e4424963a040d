"""microbench: timing fa4_tq's ops against bf16 baselines measured in the same run.

``python -m microbench --help`` lists the subcommands; see microbench/cli.py. The modules:
shapes (cases, grids, FLOP/byte counts), timing (CUDA-graph / CUDA-event medians, NVTX),
baselines (what is timed, inputs, float64 checks), report (table, CSV/JSON, plots), ncu
(Nsight Compute runs and their markdown summaries). ``*_probe.py`` files are the kernel
engineers' own device scripts and are not part of the CLI.
"""
