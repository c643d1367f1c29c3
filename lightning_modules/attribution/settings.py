"""The settings of attribution by unlearning named once: the default number of (timestep, noise) draws of each role,
and `AscentSettings`, the Fisher-preconditioned ascent that unlearns a query (`QueryUnlearning`, `QueryAttribution`,
the attribution study), nested in YAML as ``model.init_args.ascent``.

Each draw is a (timestep, noise) pair fixed by the item's id and a seed (`TextToMusicModel.fixed_loss_inputs`), so a
measurement repeated with the same draws sees the same inputs.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

SWEEP_DRAWS = 20  # per training track in the "before" and "after" sweeps: Choi et al. 2025 (arXiv 2506.18312)
UNLEARN_DRAWS = 8  # the query gradient of one ascent step is averaged over this many draws
FISHER_DRAWS = 1  # per training track in the diagonal Fisher (attribution's preconditioner, EWC's penalty)
QUERY_SEED = 1_000_003  # the query's draws, kept apart from the sweeps' seed (0) so that a training track unlearned as
# its own query (self-influence) is not measured at the very noise it was unlearned at

Masking = Literal["none", "dual", "mixed"]


@dataclass(frozen=True)
class AscentSettings:
    """``theta <- theta + lr * grad L(q) / (N * F + eps)``, `steps` times, the gradient averaged over `draws`.

    Args:
        lr: the ascent step size (Choi et al.'s best on real music: 1e-6 with all transformer layers, one step).
        steps: ascent steps; step s uses draws ``seed + s * draws .. seed + (s + 1) * draws - 1``.
        draws: (timestep, noise) draws the query gradient is averaged over.
        seed: seed of the query's draws (`QUERY_SEED`: apart from the sweeps').
        eps: added to ``N * F`` so weights the Fisher never saw do not divide by zero.
        masking: silence masking of zero-padded queries (Choi et al.): "none" treats padding as audio in unlearning
            and in the loss sweeps, "dual" masks it in both, "mixed" in unlearning only.
    """

    lr: float = 1e-6
    steps: int = 1
    draws: int = UNLEARN_DRAWS
    seed: int = QUERY_SEED
    eps: float = 1e-12
    masking: Masking = "mixed"

    def __post_init__(self) -> None:
        if self.masking not in ("none", "dual", "mixed"):
            raise ValueError(f"masking must be 'none', 'dual' or 'mixed', got {self.masking!r}.")
        for key, value in (("steps", self.steps), ("draws", self.draws)):
            if value < 1:
                raise ValueError(f"{key} must be at least 1, got {value}.")
        if self.lr <= 0 or self.eps < 0:
            raise ValueError(f"lr must be positive and eps non-negative, got lr={self.lr}, eps={self.eps}.")

    @property
    def measure_masked(self) -> bool:
        """Whether the loss sweeps should mask padding (the sweep's ``masked``): only with "dual" masking."""
        return self.masking == "dual"

    def record(self) -> dict[str, Any]:
        """The settings as recorded beside a delta (with ``measure_masked``)."""
        return {**asdict(self), "measure_masked": self.measure_masked}
