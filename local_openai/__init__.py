"""Local OpenAI-compatible embeddings server (for offline tests and benchmarks).

See ``local_openai.server`` for the server and ``local_openai.testing`` for a
helper that runs it as a subprocess.
"""
