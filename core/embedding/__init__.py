"""Stage 2, embedding: model configs and registry, the baseline and CLIP embedders, the batch runner and its cache."""
