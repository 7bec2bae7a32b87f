"""Inputs: DATA (paths, dicts, readers, iterables) and probing what a model runs with."""
