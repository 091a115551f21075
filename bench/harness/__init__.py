"""The side-by-side benchmark harness behind ``bench/run.py`` (one module per backend)."""
