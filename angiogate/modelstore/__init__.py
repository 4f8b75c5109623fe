"""The model store: which checkpoint the gate serves, promoting a new one, and switching to it.

resolve: `model.path` to a checkpoint (or rules only) and its engine
opened; promote: a checkpoint made the serving model, with its exports;
watch: the thread that swaps the judge's engine when the served model or
its exports change; recheck: exports checked on another CPU re-checked
here, in a child process.
"""
