"""Placeholder until this node type lands (issue 4)."""
