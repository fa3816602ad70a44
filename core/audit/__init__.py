"""The data audit, after retrieval: train↔test near-duplicates, suspected mislabelled train images, duplicate groups and classes that look like one."""
