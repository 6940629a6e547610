"""A transcript's text: reading a file (encoding, limits), cleaning PDF page layout into citable speech
(page_layout), cutting text into token-bounded chunks (chunking), one file into its cited chunks
(file_chunks), and a file into parts for auto_chunker.py (file_parts). Knows nothing of the store or
the queue; imports ingestion.common, and ingestion.openai_api for the models' tokenizer.
"""
