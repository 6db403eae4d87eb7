"""governance layer (see ARCHITECTURE.md §2)."""
