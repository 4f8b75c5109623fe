"""Judging: header rules, a pixel rule and the classifier turn a stored clip into a decision.

rules: the header rules (pure); contrast: the pixel rule contrast_arrival; verdict: `Judge`, prepare then classify,
never raising; pipeline: preparing clips in threads and classifying them in
batches; worker: the thread that claims received clips from the verdict log,
judges them and records the verdicts and forwards.
"""
