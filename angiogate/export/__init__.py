"""Offline exports: int8 quantisation, the agreement check, the report (`angiogate export`).

The half of exporting that needs labelled clips, NNCF and time; only the CLI
imports it (the gate serves what it installed, through `angiogate.engines`).
clips: labelled clips for calibration and evaluation; int8: NNCF post-
training quantisation; agreement: an export scored against torch fp32;
run: `run_export` and its report; trained: the exports a freshly trained
checkpoint gets before promotion; recheck: the child a gate starts to
re-check an export on its own CPU (`python -m angiogate.export.recheck`).
"""
