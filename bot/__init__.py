"""The Discord side of ponybot. Never imports torch, diffusers or transformers."""
