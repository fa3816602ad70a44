"""Stage 5, prediction: the settings (PredictConfig), top-k labels and the submission CSV, where "-1" goes, the threshold rules learnt on train, and MAP@k."""
