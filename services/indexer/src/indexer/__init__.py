"""Indexer: applies console's document events to a PostgreSQL full-text index and reports back."""
