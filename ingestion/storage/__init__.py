"""The vector store (ChromaDB): the client, the collection's record and leases (store), the worker's store
lent to its children (lent_store), vectors paid for but not yet stored (paid_vectors), a chunk's
metadata (schema), and deduplication and validation for optimize_chromadb.py (dedupe). Knows no queue;
imports ingestion.text, ingestion.openai_api and ingestion.common.
"""
