"""Tiny random components of each real backend, saved in the family's native format, for offline tests: each
module has ``save_tiny(folder) -> folder``, which builds them the way diffusers' and transformers' own tests do."""
