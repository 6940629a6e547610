"""The vector store (ChromaDB): the client and the collection's record (store), which worker holds which
file in a shared store (leases), the worker's store lent to its children (lent_store), vectors paid for
but not yet stored (paid_vectors), Chroma's SQLite database set up for a big store (chroma_sqlite), a
chunk's metadata (schema), and deduplication and validation for
optimize_chromadb.py (dedupe). Knows no queue; imports ingestion.text, ingestion.openai_api and
ingestion.common.
"""
