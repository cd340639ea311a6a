"""Test-session guard: nothing in the suite may reach the internet through huggingface_hub."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
