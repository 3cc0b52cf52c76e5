"""Versioned vector indexes: FAISS wrapper, index files on disk, and the re-embedding steps."""
