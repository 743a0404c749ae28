"""Scoring of trained models per domain: `aira-moe eval` (see evaluation/README.md at the repository root)."""
