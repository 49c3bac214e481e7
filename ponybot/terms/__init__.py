"""The built-in term lists of the prompt filter (data files; see ponybot.term_lists)."""
