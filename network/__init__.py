"""network layer (see ARCHITECTURE.md §2)."""
