"""The chaos script (`python tests/chaos/run.py --help`) and its parts."""
