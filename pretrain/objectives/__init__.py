"""Self-supervised objectives, registered by name, and their composition with the encoder.

* `registry`: the `Objective` base class (what an objective declares it reads: `needs`,
  `mines`), `register`, `OBJECTIVES`, and the check of an objective's needs against the data;
* `compose`: `build_objectives` (from the config's `{name: {weight, ...arguments}}`) and
  `PretrainModel` (encoder + objectives, one forward);
* one module per family: `temporal` (temporal_margin, clip_contrastive), `geometry`
  (landmark_geometry), `motion` (flow), `regions` (roi_inpaint, au_relation), `masked`
  (masked_image), `cross_identity` (cross_identity, cross_identity_recon,
  identity_adversarial).

Objectives read `pretrain.views.Encoded` (typed views) and return `{name: loss}`. To add one:
subclass `Objective` in the module of its family (or a new one imported below), decorate it with
`@register("name")`, declare its `needs`, and add `configs/objective/NAME.yaml`.
"""

from pretrain.objectives.registry import OBJECTIVES, Objective, check_inputs, register
from pretrain.objectives.compose import PretrainModel, build_objectives, mines
# the families register their objectives on import
from pretrain.objectives import cross_identity, geometry, masked, motion, regions, temporal  # noqa: E402

__all__ = ["OBJECTIVES", "Objective", "PretrainModel", "build_objectives", "check_inputs", "cross_identity", "geometry",
           "masked", "mines", "motion", "regions", "register", "temporal"]
