"""Training and evaluation of angiogate's clip classifier (the paper's recipe, on CUDA or the CPU).

data: labelled clips (CSV folders, verdict-log labels, phantoms), patient split, cached dataset;
augment: clip-wise augmentations; device: CUDA in mixed precision or the CPU in fp32;
loop: `train(TrainConfig)`; evaluate: Table 2/3 metrics; model_card: MODEL_CARD.md;
real_samples: a checkpoint's verdicts on real clips; cli: functions behind `angiogate retrain` /
`angiogate evaluate`.

Training imports the serving packages (clip input, engines) and is imported
by nothing but the CLI's `retrain` and `evaluate` commands, inside them, so
`angiogate serve` and `score` never load it.
"""
