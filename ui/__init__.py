"""The served side of rillflow: the Starlette app, its API, limits, metrics and the web chat."""
