"""Inference engines: the classifier's networks and checkpoints, and what runs them.

info: what a checkpoint says about itself, without torch; model: networks
and the checkpoint file; base: the engine protocol,
predictions, versions, precisions; torch_engine and openvino_engine: the two
engines; exports: finding, converting, self-checking and installing OpenVINO
exports (the serving half); choose: which engine serves a checkpoint;
metrics: the scores the export checks use. Imports run one way:
base -> engines -> exports -> choose; nothing here imports the judge,
training or the offline half of exports (`angiogate.export`).
"""
