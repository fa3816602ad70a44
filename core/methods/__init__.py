"""Stage 8, methods: trained heads, kNN regression, ensembles, zero-shot prompts and their side-by-side comparison."""
