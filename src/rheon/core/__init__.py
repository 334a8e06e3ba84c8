"""Core layer: the batch type, errors, durations and event-time types. Imports nothing from rheon."""
