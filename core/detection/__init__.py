"""Stage 4, detection: distractor scores, the threshold sweep, DBSCAN as a second detector, and how well flags match the truth."""
