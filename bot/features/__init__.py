"""One module per feature: a command group with its views and checks together."""
