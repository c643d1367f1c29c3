"""`StepProgressBar`: Lightning's rich progress bar, whose epoch reads "Epoch 0" and not "Epoch 0/-2" in a run bounded
by ``max_steps`` (Lightning then sets ``max_epochs = -1`` and the rich bar prints ``max_epochs - 1``).

``train.py`` puts it in place of Lightning's default rich bar; a progress bar named in the config is kept as it is.
"""

from __future__ import annotations

from lightning.pytorch.callbacks import RichProgressBar


class StepProgressBar(RichProgressBar):
    """The rich progress bar with the epoch count shown only where there is one."""

    def _get_train_description(self, current_epoch: int) -> str:
        # Lightning's own (2.6) appends f"/{max_epochs - 1}" whenever max_epochs is not None, -1 included
        description = f"Epoch {current_epoch}"
        if self.trainer.max_epochs is not None and self.trainer.max_epochs > 0:
            description += f"/{self.trainer.max_epochs - 1}"
        if len(self.validation_description) > len(description):  # as Lightning pads it, against flicker
            description = f"{description:{len(self.validation_description)}}"
        return description
