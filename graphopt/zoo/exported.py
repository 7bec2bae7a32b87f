"""Corpus entries exported here from other tools (to be filled in)."""
