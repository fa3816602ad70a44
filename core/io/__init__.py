"""Stage 1, input: images, archives, dataset layouts, embeddings Parquet, texts and the demo data."""
