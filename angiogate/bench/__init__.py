"""`angiogate bench`: the gate's speed, measured on this machine, beside the issue's goals.

One module per thing measured (model, decode, ingest, latency, score), the
gate it starts (gate, over `angiogate.children`, the toolkit the tests use
too), the phantoms it renders, the goals, and the report. `run.run_bench`
runs the chosen sections; speed is measured only here, never asserted in
tests.
"""
