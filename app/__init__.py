"""app layer (see ARCHITECTURE.md §2)."""
