"""scinjax.models"""
