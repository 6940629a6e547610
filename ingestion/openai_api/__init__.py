"""The OpenAI embeddings API: its models' facts (dimensions, prices, tokenizer), the client through the
real `openai` SDK (embeddings), what its answers say about its rate limits (rate_limits), and the pacing
every process on this machine shares (pacing). Imports only ingestion.common.
"""
