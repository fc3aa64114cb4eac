"""Pydantic schemas for the shipped domains."""
