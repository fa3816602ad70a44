"""Stage 3, search: the exact and approximate vector indexes (FAISS, a bf16 screen on CPUs with fast bf16) and searches kept on disk."""
