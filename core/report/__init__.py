"""Stage 10, sharing: the analysis written as one self-contained HTML file for people without the dashboard."""
