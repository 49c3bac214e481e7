"""ponybot: the contract shared by the Discord bot and the GPU workers."""

__version__ = "0.1.0"
