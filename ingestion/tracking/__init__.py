"""What is done and what is left: the queue file (file_queue, its four lists), the checkpoint, both
changed together under one lock (state), a file's outcome (outcomes), the folder scanned into the
queue (scan), canonical paths and shards (paths), and the operator's view (status). Imports the
layers below it (storage, text, openai_api, common), never ingestion.run.
"""
