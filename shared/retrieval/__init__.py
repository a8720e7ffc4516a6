"""Workspace index and search: chunks, embeddings, vector and full-text search."""
