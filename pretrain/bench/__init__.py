"""`python -m pretrain.bench step|stages|mining`: what pretraining costs, each against a baseline
measured in the same process.

* `step` (also the plain `python -m pretrain.bench`): one full pretraining step against a bare
  timm step on the same frames, phase by phase, with memory, FLOPs and, on a GPU, MFU;
* `stages`: the step time of ZeRO stages 0, 1 and 2 (under torchrun with 2 or more ranks);
* `mining`: the memory bank: FAISS against torch search, the IVF index, and a mining step's
  share of the training step, per bank size.

`pretrain.bench.config` composes the config that `step` and `stages` build their run from; the
timing helpers are `shards.timing`'s.
"""
