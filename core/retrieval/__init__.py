"""Stage 3, retrieval: the FAISS index, distractor scores and thresholds, predictions, metrics and the analysis."""
