"""The command-line tools: `pyccf-sandbox`, `pyccf-member`, `pyccf-audit` (and the benchmarks, run as scripts)."""
