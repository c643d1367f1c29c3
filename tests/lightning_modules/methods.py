"""Every unlearning method, and the arguments each needs beyond its defaults: the list the method tests run over
(`test_unlearning.test_every_method_is_in_the_contract_test` checks that it is every method the package exports)."""

from lightning_modules import unlearning

METHODS = [unlearning.GradientAscent, unlearning.GradientDifference, unlearning.NegGradPlus, unlearning.RandomLabel,
           unlearning.RetainFinetune, unlearning.NPO, unlearning.ESD, unlearning.ConceptAblation, unlearning.SalUn,
           unlearning.EWC, unlearning.SimNPO]
REQUIRED = {unlearning.ConceptAblation: {"anchor": "a piece"}}  # arguments without a default
