"""Which recipe a training run follows: the paper's full training, or fine-tuning on a few dozen labels.

A run that starts from a checkpoint (`--init-from`) with fewer than
`SMALL_SET` labelled clips is a site teaching the gate from its reviewers'
labels. The paper's recipe (60 epochs, batch 8, lr 1e-4, patience 10, a
70/15/15 split) is made for thousands of clips trained from scratch; on 24
clips it overfits and spends half an hour. The fine-tuning recipe:

  - epochs 8, patience 3: a few dozen clips are learnt in a few passes; later
    epochs only memorise them, and the validation AUC stops moving early;
  - lr 1e-4 (the rate the bundled model was trained with): 24 labels split
    60/20/20 leave ~10 clips to train on, 3 steps an epoch, so 8 epochs are
    ~24 steps. At 3e-5 the validation loss was still falling at epoch 8 and a
    site with burned-in annotation boxes was learnt only halfway (bench
    training proxy: AUC on its other clips 0.884 -> 0.944 at 3e-5, -> 0.964
    at 1e-4 with batch norm trained); at 1e-4 it bottoms out by epoch 3-4 and
    early stopping keeps that epoch;
  - batch 4: 24 clips make 6 steps an epoch rather than 3;
  - the stem and the first stage frozen (`frozen_blocks` 2, X3D): edges and
    textures carry over; a site's differences are in the later, semantic
    layers. It also skips the costliest part of the backward pass (the
    first stage runs at the largest resolution);
  - batch norm trained beyond the frozen blocks: a site's look (burned-in
    text, grey mapping, noise) moves the activations' means and variances, and
    the running statistics follow it; frozen, they kept the phantoms' and the
    same proxy reached AUC 0.944 / 96% good kept against 0.964 / 100% trained;
  - a 60/20/20 split by patient with a floor of 3 held-out clips of each label
    in validation and in test, so the threshold and the promotion check see
    both kinds. When the labels cannot give that, the run says evaluation is
    not possible and `--promote` refuses.

The input (frames, size, channels) and the normalisation are the starting
checkpoint's: its weights were trained on them (the bundled model takes
grey+contrast at 16 x 112).

Every one of these is only a default: a value given on the command line (or
set in `TrainConfig`) wins. A larger set, or a run from scratch, keeps the
paper's recipe (floor 0: the split as it always was).
"""

from __future__ import annotations

import dataclasses

SMALL_SET = 200  # fewer labelled clips than this, with --init-from: fine-tuning

FULL = {"epochs": 60, "batch_size": 8, "lr": 1e-4, "patience": 10, "split": (0.7, 0.15, 0.15),
        "frozen_blocks": 0, "freeze_batch_norm": False, "min_held_out": 0}
FINE_TUNE = {"epochs": 8, "batch_size": 4, "lr": 1e-4, "patience": 3, "split": (0.6, 0.2, 0.2),
             "frozen_blocks": 2, "freeze_batch_norm": False, "min_held_out": 3}
FREEZABLE = ("x3d_s",)  # networks whose `blocks` are the stem and the stages, in order


def recipe_name(clips: int, init_from: str | None) -> str:
    return "fine-tune" if init_from and clips < SMALL_SET else "full"


INPUT = {"num_frames": 16, "crop_size": 160, "input_channels": "grey"}  # a run from scratch


def resolve_recipe(config, clips: int, start=None):
    """`config` (a TrainConfig) with every field left None filled from the recipe for `clips`
    labelled clips; fields already set are kept. `start` (the --init-from checkpoint's
    ModelInfo) gives the input shape and channels its weights were trained on."""
    name = recipe_name(clips, config.init_from)
    defaults = dict(FINE_TUNE if name == "fine-tune" else FULL)
    defaults.update(INPUT if start is None else {"num_frames": start.num_frames, "crop_size": start.crop_size,
                                                  "input_channels": start.input_channels})
    if config.arch not in FREEZABLE:
        defaults["frozen_blocks"] = 0
    chosen = {key: value for key, value in defaults.items() if getattr(config, key) is None}
    return dataclasses.replace(config, recipe=name, **chosen)
