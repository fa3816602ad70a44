"""Stage 7, the data audit, after the analysis: train↔test near-duplicates, suspected mislabelled train images, duplicate groups and classes that look like one."""
