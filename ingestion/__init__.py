"""Transcript ingestion: chunk .txt transcripts, embed them with OpenAI, store them in ChromaDB."""
