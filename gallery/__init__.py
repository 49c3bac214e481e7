"""The community gallery: every image the bot posts, kept, browsable and searchable (its own side)."""
