"""The shipped narrow tasks."""
