"""Filtered ranking metrics (`ranking`) and the top-k rule every prediction path shares
(`predict`)."""
