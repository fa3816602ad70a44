"""Stage 6, analysis: the stages composed — a source's vectors loaded or embedded, then searched, flagged, predicted and scored as one Analysis."""
