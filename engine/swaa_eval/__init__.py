"""Long-context quality evaluation through the engine: tasks from real packaged text, a resumable grid runner, reports."""
