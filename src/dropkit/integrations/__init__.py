"""Third-party model libraries wired to dropkit's kernels (imported on demand, never at start-up).

- :mod:`dropkit.integrations.huggingface`: Hugging Face ``transformers`` attention dropout through
  dropkit's counter-based kernel (``attn_implementation="dropkit"``).
"""
