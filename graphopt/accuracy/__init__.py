"""Accuracy: tolerances, output metrics, budgets, acceptance checks and verify-each."""
