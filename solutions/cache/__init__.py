"""References for chapter 05 (the paged KV cache and prefix sharing)."""
