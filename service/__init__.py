"""The IMF link-prediction service: engine (no HTTP), cache, FAISS index, FastAPI app, CLI."""
