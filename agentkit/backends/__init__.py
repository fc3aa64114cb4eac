"""Engine backends. Each imports its SDK lazily, inside the class that needs it."""
