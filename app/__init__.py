"""app layer (layers: ledger <- governance <- network <- app; imports point down only)."""
