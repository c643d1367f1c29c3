"""Training-data attribution by unlearning (Wang et al., 2024; Choi et al., 2025): the diagonal Fisher of the training
set, per-track loss sweeps at fixed noise, Fisher-preconditioned unlearning of a query, scores and rankings, similarity
baselines and consistency evaluation."""
