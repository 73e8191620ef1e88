"""The HTTP service (FastAPI): OpenAI-compatible completions and feedback."""
