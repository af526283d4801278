"""The HTTP routes, one module per resource; each maps a request to engine calls and nothing
more. `predictions`, `explanations` and `entities` sit behind the API key; `operations` holds
the open health checks and the explorer page, and the keyed /info and /metrics."""
