"""Conversational program synthesis for people: a session over the engine (`session`) and its terminal
front end (`terminal`, `codegen chat`); the prompt format is `codegen.paradigm`."""
