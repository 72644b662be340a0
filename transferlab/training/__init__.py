"""One training loop for every trainer: ``train-source`` (sources/train.py) and ``finetune``
(heads/finetune.py) both run on it.

- ``schedule``: the learning-rate schedules (cosine to 0 per step, or step decay per epoch);
- ``checkpoint``: atomic save, ``weights_only`` load, the settings check and resume rules;
- ``loop``: the epoch loop (seeded epochs, divergence detection, validation, best/last
  tracking, early stopping, a checkpoint after every epoch, progress bars).

It knows nothing of sources, features or heads: callers hand it modules, an optimizer, a
batch iterator, a loss step and a validation function.
"""
