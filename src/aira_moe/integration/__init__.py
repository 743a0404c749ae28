"""Everything that touches LLaMA-Factory: arguments, patches, adapter creation and loading."""
