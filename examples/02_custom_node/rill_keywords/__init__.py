"""rill-keywords: the `keyword_extract` node type for rillflow (registered through the `rillflow.nodes` entry point)."""
