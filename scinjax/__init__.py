"""scinjax"""
