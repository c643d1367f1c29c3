"""Erased Stable Diffusion (Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023), for text-to-music.

The model's prediction for a forget caption ``c`` is trained toward the frozen reference's negatively guided one,
``out_ref(x_t, "") - eta * (out_ref(x_t, c) - out_ref(x_t, ""))``: sampling with ``c`` is then guided away from
what the reference associated with it. Only the forget captions are needed: by default the forget audio is never
trained on (its loss is measured without gradient, to watch the method). Training cross-attention only is ESD-x, the
variant for a named concept such as an artist; ``all`` is ESD-u.

Adaptation: ESD draws ``x_t`` by sampling the model itself with ``c`` down to a random timestep; here ``x_t`` is
real audio noised to a random timestep, so a step costs three network calls instead of a sampling loop: retain audio
(the default: no forget audio is trained on) or forget audio (``noised: forget``, the music the model makes for
``c``, closest to ESD's own samples).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from lightning_modules.models.base import Batch
from lightning_modules.unlearning.base import UnlearningModule
from lightning_modules.unlearning.losses import Noised, noised_inputs


class ESD(UnlearningModule):
    """Trains ``criterion(out(x_t, c), out_ref(x_t, "") - negative_guidance * (out_ref(x_t, c) - out_ref(x_t, "")))``
    for the forget captions ``c`` on noised audio ``x_t``.

    Args:
        negative_guidance: ``eta``, how far past the unconditional prediction the target is pushed.
        noised: whose audio is noised into ``x_t``: "retain" or "forget".
        parameter_groups: as in `UnlearningModule`, by default ``cross_attention`` (ESD-x); ``all`` is ESD-u.
        **kwargs: `UnlearningModule`'s other arguments (the model, optimizer, ...).
    """

    needs_reference = True

    def __init__(self, *args, negative_guidance: float = 1.0, noised: Noised = "retain",
                 parameter_groups: Sequence[str] = ("cross_attention",), **kwargs) -> None:
        if negative_guidance < 0:
            raise ValueError(f"negative_guidance must be non-negative, got {negative_guidance}.")
        super().__init__(*args, parameter_groups=parameter_groups, **kwargs)
        self.negative_guidance = negative_guidance
        self.noised = noised

    def objective(self, forget: Batch, retain: Batch) -> dict[str, Tensor]:
        source, erased = noised_inputs(forget, retain, self.noised)
        model_draws, conditional_draws, unconditional_draws = self.same_draws(3)
        with torch.no_grad():
            conditional = self.reference.predict(source, captions=erased, generator=conditional_draws).output
            unconditional = self.reference.predict(source, captions=[""] * len(erased),
                                                   generator=unconditional_draws).output
            forget_loss = self.model.loss(forget, reduction="mean")
            retain_loss = self.model.loss(retain, reduction="mean")
        target = unconditional - self.negative_guidance * (conditional - unconditional)
        prediction = self.model.predict(source, captions=erased, generator=model_draws)
        loss = self.model.criterion(prediction.output, target, prediction.weight).mean()
        return {"loss": loss, "forget_loss": forget_loss, "retain_loss": retain_loss}
