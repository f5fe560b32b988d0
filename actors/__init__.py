"""Actors: the runtime that hosts them and, in later issues, one module per resource kind."""
