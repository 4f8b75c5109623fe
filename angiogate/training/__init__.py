"""Training and evaluation of angiogate's clip classifier (the paper's recipe, on CPU).

data: labelled clips (CSV folders, verdict-log labels, phantoms), patient split, cached dataset;
augment: clip-wise augmentations; loop: `train(TrainConfig)`; evaluate: Table 2/3 metrics;
model_card: MODEL_CARD.md; cli: functions behind `angiogate retrain` / `angiogate evaluate`.
"""
