"""Stage 9, maps: 2-D projections of train and test (UMAP, t-SNE, PCA) and the figures drawn from them."""
