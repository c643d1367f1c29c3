"""Concept Ablation (Kumari et al., "Ablating Concepts in Text-to-Image Diffusion Models", ICCV 2023), for
text-to-music.

The model's prediction for a forget caption is distilled toward the frozen reference's prediction, at the same noisy
input, for an anchor caption: the caption with the target concept (e.g. ``Kestrel Drive``) replaced by the
anchor concept (e.g. nothing, or another artist), or one fixed anchor caption. Generation from the forget captions
then follows the anchor. As in the paper, the ordinary loss on anchor-like audio (here the retain set) can be added.

Adaptation: the paper noises images generated from the anchor prompts; here the noisy inputs are real audio: retain
audio (the default, music that is not the forget set's) or forget audio (``noised: forget``, where sampling from the
forget captions goes).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_modules.models.base import Batch
from lightning_modules.unlearning.base import UnlearningModule
from lightning_modules.unlearning.losses import Noised, noised_inputs


class ConceptAblation(UnlearningModule):
    """Trains ``criterion(out(x_t, c), out_ref(x_t, anchor(c))) + retain_weight * loss(retain)`` for the forget
    captions ``c`` on noised audio ``x_t``.

    Args:
        anchor: the anchor concept; with `target`, it replaces `target` in each forget caption, otherwise it is the
            anchor caption of every item.
        target: the concept to ablate as it appears in the captions (e.g. ``Kestrel Drive``); every forget
            caption must contain it.
        retain_weight: weight of the ordinary loss on the retain set (0: not computed with gradient).
        noised: whose audio is noised into ``x_t``: "retain" or "forget".
        parameter_groups: as in `UnlearningModule`, by default ``cross_attention``.
        **kwargs: `UnlearningModule`'s other arguments (the model, optimizer, ...).
    """

    needs_reference = True

    def __init__(self, *args, anchor: str, target: str | None = None, retain_weight: float = 0.0,
                 noised: Noised = "retain", parameter_groups: Sequence[str] = ("cross_attention",), **kwargs) -> None:
        if target is not None and not target:
            raise ValueError("target is empty; give the concept as it appears in the captions, or leave it out to "
                             "use `anchor` as the caption of every item.")
        super().__init__(*args, parameter_groups=parameter_groups, **kwargs)
        self.anchor = anchor
        self.target = target
        self.retain_weight = retain_weight
        self.noised = noised

    def anchor_caption(self, caption: str) -> str:
        if self.target is None:
            return self.anchor
        if self.target not in caption:
            raise ValueError(f"Forget caption {caption!r} does not contain target {self.target!r}; set `target` to "
                             "the text every forget caption shares, or leave it out to use one anchor caption.")
        return caption.replace(self.target, self.anchor)

    def on_fit_start(self) -> None:
        for item in self.split_dataset("forget").items:  # a caption without the target fails now, not mid-run
            self.anchor_caption(item.caption)

    def objective(self, forget: Batch, retain: Batch) -> dict[str, Tensor]:
        source, ablated = noised_inputs(forget, retain, self.noised)
        model_draws, anchor_draws = self.same_draws(2)
        with torch.no_grad():
            anchors = [self.anchor_caption(caption) for caption in ablated]
            target = self.reference.predict(source, captions=anchors, generator=anchor_draws).output
            forget_loss = self.model.loss(forget, reduction="mean")
        prediction = self.model.predict(source, captions=ablated, generator=model_draws)
        ablation = self.model.criterion(prediction.output, target, prediction.weight).mean()
        loss, retain_loss = self.plus_retain(ablation, retain, self.retain_weight)
        return {"loss": loss, "ablation_loss": ablation.detach(), "forget_loss": forget_loss,
                "retain_loss": retain_loss}
