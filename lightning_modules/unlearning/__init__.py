"""Unlearning methods: one LightningModule per method, sharing `UnlearningModule`."""

from lightning_modules.unlearning.base import UnlearningModule
from lightning_modules.unlearning.concept_ablation import ConceptAblation
from lightning_modules.unlearning.esd import ESD
from lightning_modules.unlearning.ewc import EWC
from lightning_modules.unlearning.gradient_ascent import GradientAscent
from lightning_modules.unlearning.gradient_difference import GradientDifference
from lightning_modules.unlearning.neg_grad_plus import NegGradPlus
from lightning_modules.unlearning.npo import NPO
from lightning_modules.unlearning.random_label import RandomLabel
from lightning_modules.unlearning.retain_finetune import RetainFinetune
from lightning_modules.unlearning.salun import SalUn
from lightning_modules.unlearning.simnpo import SimNPO

__all__ = ["ESD", "EWC", "NPO", "ConceptAblation", "GradientAscent", "GradientDifference", "NegGradPlus",
           "RandomLabel", "RetainFinetune", "SalUn", "SimNPO", "UnlearningModule"]
