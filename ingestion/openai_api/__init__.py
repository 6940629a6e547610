"""The OpenAI embeddings API: its models' facts (dimensions, prices, tokenizer), the client through the
real `openai` SDK (embeddings), and the pacing every process on this machine shares (pacing).
Imports only ingestion.common.
"""
